"""The fleet console: a web page for the fleet, served by ``edgewise serve --console``."""
