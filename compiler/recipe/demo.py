"""``edgewise demo``: the whole path once, on this machine.

train → compile → start a broker → start the agent on a video of digits → push → print live
results and their accuracy against the digits shown → stop everything it started.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from agent.contract import Topics, generate_keypair

from ..compile.loading import SourceModel
from ..compile.pipeline import CompileOptions, compile_model
from ..compile.report_render import format_table
from ..fleet.broker import start_local_broker
from ..fleet.mqtt import BrokerAddress, connect, disconnect
from ..fleet.push import push_package
from ..fleet.results import DeviceFeed, format_result
from .demo_model import train_demo_model
from .digits import PREPROCESS, load_dataset
from .video import write_digits_video

log = logging.getLogger(__name__)
DEVICE = "demo-cam"


@dataclass(frozen=True)
class DemoOutcome:
    results: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.results if self.results else 0.0


def write_agent_config(
    path: Path,
    *,
    port: int,
    public_keys: list[Path],
    video: Path,
    state: Path,
    device: str = DEVICE,
    extra: str = "",
) -> Path:
    """A minimal agent config: this device, a local broker, a looping video.

    Paths are written absolute: the agent resolves relative ones against the config's own folder,
    not against the working directory the caller used to name them.
    """
    keys = ", ".join(f'"{k.resolve()}"' for k in public_keys)
    video, state = video.resolve(), state.resolve()
    path.write_text(
        f'[device]\nid = "{device}"\nstate_dir = "{state}"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f"[trust]\npublic_keys = [{keys}]\n\n"
        f'[source]\nkind = "video"\nuri = "{video}"\nloop = true\n\n{extra}'
    )
    return path


def run_demo(workdir: Path, digits: int = 100, prefer_embedded: bool = False) -> DemoOutcome:
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    torch.set_num_threads(2)
    dataset = load_dataset("digits", seed=0)
    print("== 1. train the demo CNN on scikit-learn digits (28×28)")
    model = train_demo_model(dataset.train, PREPROCESS, progress=sys.stderr.isatty())
    print("== 2. compile: prune 50%, recover, export, verify, int8 quantize, evaluate, sign")
    key, pub = workdir / "signing.key", workdir / "signing.pub"
    generate_keypair(key, pub)
    options = CompileOptions(
        name="digits-cnn",
        version="1.0.0",
        signing_key=key,
        out_dir=workdir / "packages",
        prune_ratio=0.5,
        progress=sys.stderr.isatty(),  # bars only on a terminal, never into a log
    )
    compiled = compile_model(SourceModel("eager", model), dataset, PREPROCESS, options)
    print(format_table(compiled.report))
    print(f"   package {compiled.package.root}, report {compiled.html}")
    video = workdir / "digits.avi"
    truth = write_digits_video(video, dataset.test, count=digits)
    broker = start_local_broker(prefer_embedded)
    print(f"== 3. broker: {broker.kind} on {broker.host}:{broker.port}")
    config = workdir / "agent.toml"
    write_agent_config(
        config, port=broker.port, public_keys=[pub], video=video, state=workdir / "state"
    )
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)])
    client = connect(BrokerAddress(broker.host, broker.port))
    topics = Topics()
    try:
        feed = DeviceFeed(client, topics, DEVICE)
        print(f"== 4. push {options.name} {options.version} to {DEVICE}")
        push_package(client, topics, compiled.package, f"device:{DEVICE}")
        print("== 5. results from the device")
        correct = seen = 0
        deadline = time.monotonic() + 120
        for kind, message in feed.messages(timeout=30):
            if kind == "events":
                print(f"   event: {message}")
            elif kind == "results":
                seen += 1
                correct += message["label"] == str(truth[message["frame"]])
                if seen % 25 == 0 or seen <= 5:
                    print(f"   {format_result(message)}  [running accuracy {correct / seen:.3f}]")
            if seen >= len(truth) or time.monotonic() > deadline:
                break
    finally:
        disconnect(client)
        agent.terminate()
        agent.wait(10)
        broker.close()
    outcome = DemoOutcome(seen, correct)
    print(f"== done: {outcome.results} results, accuracy {outcome.accuracy:.3f} vs digits shown")
    return outcome
