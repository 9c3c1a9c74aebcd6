"""
The container health check: C{python -m ethtwisted.healthcheck}.

One image runs every plugin, so the check finds the running twistd plugin in C{/proc} and asks
the HTTP endpoint that plugin was given, on the command line or in its C{ETH_*} variable:
C{/healthz} of the stats API (C{--stats} of eth-server and eth-demo, C{--listen} of eth-stats)
or of the client's metrics (C{--metrics} of eth-client).  C{ETH_HEALTHCHECK_URL} overrides
that.  A service with no HTTP endpoint is healthy while it runs.  Exit status 0 is healthy, 1
is not, with one line saying why.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from ethtwisted.endpoints import TCP_KINDS, parse_endpoint
from ethtwisted.options import DEFAULT_WEB, env_name

TIMEOUT = 4.0
ENDPOINT_OPTIONS = {
    "eth-server": "stats",
    "eth-demo": "stats",
    "eth-stats": "listen",
    "eth-client": "metrics",
}
"""The option of each plugin naming the endpoint that answers C{/healthz}."""
DEFAULT_ENDPOINTS = {"eth-stats": DEFAULT_WEB, "eth-demo": DEFAULT_WEB}
"""The default of that option, for the plugins that serve HTTP by default."""
# Addresses that mean "every interface" when listening; the check asks the loopback instead.
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104


def endpoint_url(description: str, path: str) -> str | None:
    """
    The URL of C{path} on a server listening on the endpoint C{description}, as seen from
    the same host; C{None} for endpoints that are not TCP, or not endpoint strings at all.
    """
    description = description.strip()
    if description.isdigit():
        description = f"tcp:{description}:interface=127.0.0.1"
    try:
        args, kwargs = parse_endpoint(description)
    except ValueError:
        return None
    kind = args[0].lower()
    if kind not in TCP_KINDS:
        return None
    port = kwargs.get("port") or (args[1] if len(args) > 1 else "")
    if not port.isdigit():
        return None
    host = kwargs.get("interface", "")
    if host in _ANY_ADDRESS:
        host = "::1" if kind == "tcp6" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}{path}"


def running_plugin(proc: Path = Path("/proc")) -> tuple[str, list[str]] | None:
    """
    The twistd plugin running in this container and the arguments after its name, from the
    command lines in C{proc} (C{eth server} counts as eth-server); C{None} if there is none
    (or no C{/proc}).
    """
    try:
        pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    except OSError:
        return None
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        argv = raw.decode("utf-8", "replace").split("\0")
        legacy = any(Path(arg).name == "eth" for arg in argv[:2])
        for i, arg in enumerate(argv):
            name = f"eth-{arg}" if legacy and arg in ("server", "client") else arg
            if name in ENDPOINT_OPTIONS:
                return name, argv[i + 1 :]
    return None


def option_value(args: Sequence[str], name: str) -> str | None:
    """
    The value of C{--name} in C{args}, given as C{--name=value} or C{--name value}.
    """
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def health_url(environ: Mapping[str, str], plugin: tuple[str, Sequence[str]] | None) -> str | None:
    """
    What to ask to know the service is healthy, from the running plugin's arguments and the
    environment; C{None} when it serves no HTTP.
    """
    if environ.get("ETH_HEALTHCHECK_URL"):
        return environ["ETH_HEALTHCHECK_URL"]
    if plugin is None:
        return None
    name, args = plugin
    option = ENDPOINT_OPTIONS[name]
    description = option_value(args, option) or environ.get(env_name(option))
    if description is None:
        description = DEFAULT_ENDPOINTS.get(name)
    return endpoint_url(description, "/healthz") if description else None


def check(url: str) -> str | None:
    """
    C{None} if C{url} answers 200, else the reason it is not healthy.
    """
    # The check runs beside the server it asks: a self-signed certificate is no reason to
    # call it unhealthy.
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as response:  # noqa: S310
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except Exception as e:
        return f"{url}: {e}"


def main() -> None:
    url = health_url(os.environ, running_plugin())
    if url is None:
        return
    reason = check(url)
    if reason is not None:
        sys.stderr.write(f"unhealthy: {reason}\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
