#!/usr/bin/env bash
# Install the edgewise device agent on Raspberry Pi OS (arm64) or NVIDIA Jetson (JetPack/L4T).
# Run `deploy/install.sh --help` for the options. Safe to run again: a second run changes nothing
# and never overwrites /etc/edgewise/agent.toml.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PROG=${0##*/}
PYTHON=${PYTHON:-python3}
UNIT=edgewise-agent
USER_NAME=edgewise

# sysexits.h, so callers can tell a usage error from a permission problem.
EX_USAGE=64
EX_UNAVAILABLE=69
EX_NOPERM=77

# The agent extra of pyproject.toml with onnxruntime swapped for the GPU build. The project itself
# goes in with --no-deps, or pip would also pull the CPU onnxruntime and the two would overwrite
# each other's `onnxruntime` package. tests/test_install.py keeps this list in step with pyproject.
JETSON_DEPS=(
    "onnxruntime-gpu>=1.18"
    "numpy>=1.24"
    "paho-mqtt>=2.0,<3"
    "opencv-python-headless>=4.8"
    "cryptography>=42"
    "pydantic>=2.6,<3"
    "tomli>=2; python_version < '3.11'"
    "shtab>=1.7"
)

# Picamera2 (sources kind = "picamera") comes from apt on Raspberry Pi OS, not from pip: it needs
# the libcamera bindings built for the system. Without recommends: no Qt or OpenGL on a headless
# board. The venv then also sees the system's site-packages.
PI_APT=(python3-picamera2)

usage() {
    cat <<EOF
Usage: $PROG [OPTIONS]

Install the edgewise agent: user '$USER_NAME', a venv in /opt/edgewise/venv, config in
/etc/edgewise, state in /var/lib/edgewise and the systemd unit $UNIT.service. On a Raspberry
Pi also ${PI_APT[*]} (apt) for the Pi camera, seen by the venv (--system-site-packages).

Options:
  --board jetson|pi|generic  skip detection (Jetson when /etc/nv_tegra_release exists)
  --from SPEC        what pip installs (default: this checkout, "${REPO}[agent]")
  --start            also start the service (it is always enabled)
  --uninstall        stop and disable the service, remove the unit and /opt/edgewise;
                     /etc/edgewise, /var/lib/edgewise and the user stay
  --purge            --uninstall, and remove /etc/edgewise, /var/lib/edgewise and the user too
  --root DIR         install under DIR (image building, tests); unless DIR is /, the user and
                     systemctl steps are only printed
  --dry-run          print each action ("+ ...") and change nothing
  --no-venv          do not create the venv, run pip or apt-get (no network needed)
  -h, --help         this text

Environment:
  PYTHON             the interpreter that creates the venv (default: python3, needs >= 3.10)
  PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS
                     read by pip. On Jetson, onnxruntime-gpu is not on PyPI: point pip at
                     NVIDIA's wheels, e.g. PIP_EXTRA_INDEX_URL=https://pypi.jetson-ai-lab.io/jp6/cu126
                     (pick the JetPack/CUDA of the board) or a wheel from the Jetson Zoo.

Exit codes: 64 bad option, 69 missing prerequisite, 77 not root.
EOF
}

die() {
    local code=$1
    shift
    echo "$PROG: $*" >&2
    exit "$code"
}

note() { echo "# $*"; }

# One shell word per argument, quoted only when needed, so a dry run reads like a script.
quote() {
    local out=() word
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+=("$word")
        else
            out+=("'${word//\'/\'\\\'\'}'")
        fi
    done
    echo "${out[*]}"
}

# A change to the target tree: printed, and run unless --dry-run.
act() {
    echo "+ $(quote "$@")"
    if ((!DRY_RUN)); then
        "$@"
    fi
}

# A change to the running host's users. Under --root DIR it would hit the wrong system, so it is
# only reported.
host_act() {
    if [[ -n $PREFIX ]]; then
        note "would run (--root $ROOT): $(quote "$@")"
    else
        act "$@"
    fi
}

board=""
from_spec="${REPO}[agent]"
start=0
uninstall=0
purge=0
ROOT=/
root_given=0
DRY_RUN=0
make_venv=1

need_arg() {
    [[ $# -ge 2 && -n $2 ]] || die $EX_USAGE "option $1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --board)
            need_arg "$@"
            board=$2
            shift
            ;;
        --board=*) board=${1#*=} ;;
        --from)
            need_arg "$@"
            from_spec=$2
            shift
            ;;
        --from=*) from_spec=${1#*=} ;;
        --root)
            need_arg "$@"
            ROOT=$2
            root_given=1
            shift
            ;;
        --root=*)
            ROOT=${1#*=}
            root_given=1
            ;;
        --start) start=1 ;;
        --uninstall) uninstall=1 ;;
        --purge)
            uninstall=1
            purge=1
            ;;
        --dry-run) DRY_RUN=1 ;;
        --no-venv) make_venv=0 ;;
        *) die $EX_USAGE "unknown option: $1 (see --help)" ;;
    esac
    shift
done

case $board in
    "" | jetson | pi | generic) ;;
    *) die $EX_USAGE "--board must be jetson, pi or generic, not '$board'" ;;
esac
[[ -d $ROOT ]] || die $EX_USAGE "--root $ROOT: not a directory"
ROOT=$(cd "$ROOT" && pwd -P)
# Every installed path is "$PREFIX/...": empty for the live system.
PREFIX=${ROOT%/}

if ((EUID != 0 && !DRY_RUN)) && [[ -z $PREFIX ]]; then
    if ((root_given)); then
        die $EX_NOPERM "installing into / needs root: run with sudo"
    fi
    die $EX_NOPERM "must run as root (sudo $0 ...), or use --dry-run or --root DIR"
fi

VENV=/opt/edgewise/venv
CONF_DIR=/etc/edgewise
STATE_DIR=/var/lib/edgewise
UNIT_PATH=/etc/systemd/system/$UNIT.service

have_systemctl() { command -v systemctl >/dev/null 2>&1; }

# systemctl on the live system. Under --root it would act on the wrong system, and without a
# running systemd (a container, an image chroot) only the offline verbs work.
sysctl() {
    if [[ -n $PREFIX ]]; then
        note "would run (--root $ROOT): $(quote systemctl "$@")"
    elif ! have_systemctl; then
        note "no systemctl here: skipped $(quote systemctl "$@")"
    elif [[ $1 != enable && $1 != disable && ! -d /run/systemd/system ]]; then
        note "systemd is not running: skipped $(quote systemctl "$@")"
    else
        act systemctl "$@"
    fi
}

uninstall_agent() {
    # Only what is there is undone, so a second uninstall is a no-op rather than an error.
    if [[ -n $PREFIX ]] || ! have_systemctl; then
        sysctl stop "$UNIT.service"
        sysctl disable "$UNIT.service"
    else
        if systemctl is-active --quiet "$UNIT.service" 2>/dev/null; then
            sysctl stop "$UNIT.service"
        fi
        if systemctl is-enabled --quiet "$UNIT.service" 2>/dev/null; then
            sysctl disable "$UNIT.service"
        fi
    fi
    if [[ -e $PREFIX$UNIT_PATH ]]; then
        act rm -f "$PREFIX$UNIT_PATH"
    fi
    if [[ -e $PREFIX$UNIT_PATH.d/jetson.conf ]]; then
        act rm -f "$PREFIX$UNIT_PATH.d/jetson.conf"
        # Only when empty: other drop-ins there are the admin's.
        act rmdir --ignore-fail-on-non-empty "$PREFIX$UNIT_PATH.d"
    fi
    sysctl daemon-reload
    if [[ -e $PREFIX/opt/edgewise ]]; then
        act rm -rf "$PREFIX/opt/edgewise"
    fi
    if ((purge)); then
        local dir
        for dir in "$PREFIX$CONF_DIR" "$PREFIX$STATE_DIR"; do
            if [[ -e $dir ]]; then
                act rm -rf "$dir"
            fi
        done
        if [[ -n $PREFIX ]]; then
            host_act userdel "$USER_NAME"
        elif getent passwd "$USER_NAME" >/dev/null; then
            act userdel "$USER_NAME"
        fi
    else
        note "kept $PREFIX$CONF_DIR and $PREFIX$STATE_DIR (--purge removes them and the user)"
    fi
}

detect_board() {
    if [[ -n $board ]]; then
        note "board: $board (--board)"
    elif [[ -e $PREFIX/etc/nv_tegra_release ]]; then
        board=jetson
        note "board: jetson ($PREFIX/etc/nv_tegra_release)"
    elif grep -qs "Raspberry Pi" /proc/device-tree/model; then
        board=pi
        note "board: pi (/proc/device-tree/model)"
    else
        board=generic
        note "board: generic"
    fi
}

ensure_user() {
    local groups=() group
    # video: cameras (/dev/video*, Jetson's nvhost devices); dialout: serial sensors.
    for group in video dialout; do
        if getent group "$group" >/dev/null; then
            groups+=("$group")
        fi
    done
    local joined
    joined=$(
        IFS=,
        echo "${groups[*]}"
    )
    if [[ -n $PREFIX ]]; then
        host_act useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin ${joined:+--groups "$joined"} "$USER_NAME"
        return
    fi
    if ! getent passwd "$USER_NAME" >/dev/null; then
        local nologin
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        act useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell "$nologin" ${joined:+--groups "$joined"} "$USER_NAME"
        return
    fi
    # An existing user keeps its settings; only missing groups are added.
    local have
    have=" $(id -nG "$USER_NAME" 2>/dev/null || true) "
    for group in "${groups[@]}"; do
        if [[ $have != *" $group "* ]]; then
            act usermod -a -G "$group" "$USER_NAME"
        fi
    done
}

# The edgewise group only exists on the live system; under --root the owner is reported instead.
own() {
    local owner=$1 path=$2
    if [[ -n $PREFIX ]]; then
        note "would run (--root $ROOT): chown $owner $path"
    elif [[ $(stat -c %U:%G "$path" 2>/dev/null) != "$owner" ]]; then
        act chown "$owner" "$path"
    fi
}

# install -d re-applies the mode, so a loosened directory is tightened again on the next run.
make_dir() {
    local mode=$1 owner=$2 path=$PREFIX$3
    if [[ ! -d $path || $(stat -c %a "$path") != "${mode#0}" ]]; then
        act install -d -m "$mode" "$path"
    fi
    own "$owner" "$path"
}

make_venv() {
    local py=$VENV/bin/python
    if ((!make_venv)); then
        note "skipped the venv and pip (--no-venv)"
        return
    fi
    if ((!DRY_RUN)); then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null ||
            die $EX_UNAVAILABLE "$PYTHON is missing or older than 3.10"
        # Debian and Ubuntu ship venv's ensurepip separately.
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
            die $EX_UNAVAILABLE "$PYTHON has no venv module: apt-get install python3-venv"
    fi
    case $(uname -m) in
        aarch64 | arm64 | x86_64) ;;
        *) echo "$PROG: warning: $(uname -m): onnxruntime has no wheels here; use a 64-bit OS" >&2 ;;
    esac
    local system_site=()
    if [[ $board == pi ]]; then
        install_pi_camera
        system_site=(--system-site-packages)
    fi
    if [[ ! -x $PREFIX$py ]]; then
        act "$PYTHON" -m venv "${system_site[@]}" "$PREFIX$VENV"
    elif [[ $board == pi ]] && ! grep -qs '^include-system-site-packages = true' "$PREFIX$VENV/pyvenv.cfg"; then
        # A venv from an earlier install: let it see picamera2 too; its packages stay.
        act "$PYTHON" -m venv --system-site-packages "$PREFIX$VENV"
    fi
    local pip=("$PREFIX$py" -m pip install --disable-pip-version-check)
    if [[ $board == jetson ]]; then
        drop_other_runtime onnxruntime
        act "${pip[@]}" "${JETSON_DEPS[@]}"
        act "${pip[@]}" --no-deps "$from_spec"
    else
        drop_other_runtime onnxruntime-gpu
        act "${pip[@]}" "$from_spec"
    fi
    if [[ $board == pi ]] && ((!DRY_RUN)) && ! "$PREFIX$py" -c 'import picamera2' 2>/dev/null; then
        # Not fatal: the command source with rpicam-vid reaches the same camera.
        note "picamera2 does not import in the venv: use kind = \"command\" with rpicam-vid (README)"
    fi
    # Fails now, not at the first service start, when the agent cannot even import.
    echo "+ $(quote "$PREFIX$VENV/bin/edgewise-agent" --help) >/dev/null"
    if ((!DRY_RUN)); then
        "$PREFIX$VENV/bin/edgewise-agent" --help >/dev/null ||
            die $EX_UNAVAILABLE "the installed agent does not start; see the error above"
    fi
}

apt_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Only what is missing, so a second run has nothing to do. On the host's package database, so
# under --root it is only reported.
install_pi_camera() {
    local missing=() package
    for package in "${PI_APT[@]}"; do
        apt_installed "$package" || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        note "no apt-get here: install ${missing[*]} for sources kind = \"picamera\""
        return
    fi
    host_act apt-get install -y --no-install-recommends "${missing[@]}"
}

# A venv left over from the other board type: both wheels own the `onnxruntime` package.
drop_other_runtime() {
    local py=$PREFIX$VENV/bin/python
    if [[ -x $py ]] && "$py" -m pip show -q "$1" >/dev/null 2>&1; then
        act "$py" -m pip uninstall -y "$1"
    fi
}

install_config() {
    make_dir 0750 "root:$USER_NAME" "$CONF_DIR"
    # Public keys the agent verifies packages with: it must read them.
    make_dir 0750 "root:$USER_NAME" "$CONF_DIR/keys"
    # The broker's CA and this device's certificate (public; the key is a credential).
    make_dir 0750 "root:$USER_NAME" "$CONF_DIR/tls"
    # Secrets systemd hands over with LoadCredential=: root only, the agent never reads them here.
    make_dir 0700 root:root "$CONF_DIR/credentials"
    make_dir 0750 "$USER_NAME:$USER_NAME" "$STATE_DIR"
    local conf=$PREFIX$CONF_DIR/agent.toml
    if [[ -e $conf ]]; then
        note "kept $conf (existing config is never overwritten)"
    else
        act install -m 0640 "$REPO/deploy/agent.example.toml" "$conf"
        own "root:$USER_NAME" "$conf"
    fi
}

# The unit allows cameras and serial ports only (DevicePolicy=closed); CUDA and TensorRT also
# open the Jetson GPU nodes. A drop-in rather than an edit keeps the shipped unit identical on
# every board, and `systemctl edit` overrides stay the admin's own.
JETSON_DROPIN='# Installed by deploy/install.sh on Jetson: the GPU device nodes CUDA and TensorRT open.
[Service]
DeviceAllow=char-nvhost rw
DeviceAllow=char-nvmap rw'

write_jetson_dropin() {
    printf '%s\n' "$JETSON_DROPIN" >"$1"
    chmod 0644 "$1"
}

install_jetson_dropin() {
    local dir=$PREFIX$UNIT_PATH.d
    if [[ $(cat "$dir/jetson.conf" 2>/dev/null) != "$JETSON_DROPIN" ]]; then
        [[ -d $dir ]] || act install -d -m 0755 "$dir"
        act write_jetson_dropin "$dir/jetson.conf"
    fi
}

install_unit() {
    local src=$REPO/systemd/$UNIT.service dst=$PREFIX$UNIT_PATH
    if [[ ! -d ${dst%/*} ]]; then
        act install -d -m 0755 "${dst%/*}"
    fi
    if ! cmp -s "$src" "$dst"; then
        act install -m 0644 "$src" "$dst"
    fi
    if [[ $board == jetson ]]; then
        install_jetson_dropin
    fi
    sysctl daemon-reload
    sysctl enable "$UNIT.service"
    if ((start)); then
        sysctl start "$UNIT.service"
        if [[ -z $PREFIX ]] && ((!DRY_RUN)); then
            note "if $UNIT was already running, 'systemctl restart $UNIT' loads the new version"
        fi
    fi
}

if ((DRY_RUN)); then
    note "dry run: nothing is changed"
fi
if ((uninstall)); then
    uninstall_agent
    exit 0
fi

for file in deploy/agent.example.toml "systemd/$UNIT.service"; do
    [[ -f $REPO/$file ]] || die $EX_UNAVAILABLE "$REPO/$file is missing: run from a full checkout"
done
detect_board
ensure_user
install_config
[[ -d $PREFIX/opt/edgewise ]] || act install -d -m 0755 "$PREFIX/opt/edgewise"
make_venv
install_unit
if ((!DRY_RUN)); then
    note "installed; edit $PREFIX$CONF_DIR/agent.toml, put the release keys in $PREFIX$CONF_DIR/keys,"
    note "the device certificate and CA in $PREFIX$CONF_DIR/tls and its key in $PREFIX$CONF_DIR/credentials/mqtt-tls-key"
fi
