"""
How ethtwisted is installed and started: the wheel (what the image installs), the locks of
its dependencies, the older C{eth} command line, and the container health check.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import metadata
from pathlib import Path
from threading import Thread

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ethtwisted import healthcheck, legacy_cli
from tests.services import REPO_ROOT, free_port

# What the Dockerfile's build context holds (see .dockerignore): the wheel is built from it.
BUILD_CONTEXT = ["pyproject.toml", "setup.cfg", "setup.py", "README.md", "ethtwisted", "twisted"]
COMMAND_TIMEOUT = 120


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A copy of what the image build gets from the checkout.
    """
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]", "dropin.cache")
    for name in BUILD_CONTEXT:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The wheel built from that copy, as the image's first stage builds it.
    """
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), "."]
    result = run(command, source)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("ethtwisted-*.whl")
    return built


def link_dependencies(target: Path) -> None:
    """
    Make C{target} a view of this environment's site-packages without ethtwisted: links to
    every entry but the package, its metadata and its plugin declarations.
    """
    target.mkdir()
    for directory in sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}):
        for entry in Path(directory).iterdir():
            if "ethtwisted" in entry.name.lower() or (target / entry.name).exists():
                continue
            if entry.name == "twisted":
                (target / "twisted").mkdir()
                for module in entry.iterdir():
                    if module.name != "plugins":
                        (target / "twisted" / module.name).symlink_to(module)
                (target / "twisted" / "plugins").mkdir()
                for plugin in (entry / "plugins").iterdir():
                    if plugin.name not in ("ethtwisted_plugins.py", "dropin.cache"):
                        (target / "twisted" / "plugins" / plugin.name).symlink_to(plugin)
            else:
                (target / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A fresh virtualenv with the wheel installed (not editable).  Its dependencies are not
    installed again: this environment's are added after its own site-packages, less any
    ethtwisted installed here, so that only the wheel's can be found.
    """
    root = tmp_path_factory.mktemp("venv")
    result = run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], root)
    assert result.returncode == 0, result.stderr
    python = root / "env" / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    result = run([*pip, "--no-deps", "--no-index", str(wheel)], root)
    assert result.returncode == 0, result.stdout + result.stderr
    link_dependencies(root / "dependencies")
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(run([str(python), "-c", where], root).stdout.strip())
    (site_packages / "test-dependencies.pth").write_text(
        f"import site; site.addsitedir({str(root / 'dependencies')!r})\n", encoding="utf-8"
    )
    return root / "env"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """
    A working directory outside the checkout, so that nothing is imported from it.
    """
    return tmp_path


def test_wheel_contents(wheel: Path, source: Path) -> None:
    """
    The wheel holds every file of the package (modules, templates, SQL, py.typed), the plugin
    declarations without an C{__init__.py} that would hide Twisted's own C{twisted} package,
    and the C{eth} console command.
    """
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "eth = ethtwisted.legacy_cli:main" in archive.read(entry_points).decode()
    package_files = {
        p.relative_to(source).as_posix() for p in (source / "ethtwisted").rglob("*") if p.is_file()
    }
    assert package_files - names == set()
    assert "twisted/plugins/ethtwisted_plugins.py" in names
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & names


def test_installed_package_is_the_wheel(venv: Path, elsewhere: Path) -> None:
    """
    In the fresh virtualenv, the package and its plugin declarations come from the wheel.
    """
    code = (
        "import ethtwisted, twisted.plugins.ethtwisted_plugins as p; "
        "print(ethtwisted.__file__); print(p.__file__)"
    )
    result = run([str(venv / "bin" / "python"), "-c", code], elsewhere)
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).is_relative_to(venv), path


@pytest.mark.parametrize("plugin", ["eth-server", "eth-client", "eth-stats"])
def test_twistd_plugin_help(venv: Path, elsewhere: Path, plugin: str) -> None:
    """
    C{twistd PLUGIN --help} works from another directory once the wheel is installed: twistd
    finds the plugins in site-packages.
    """
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    result = run([str(venv / "bin" / "python"), "-c", twistd, plugin, "--help"], elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Usage: twistd [options] {plugin} [options]" in result.stdout


def test_eth_command_help(venv: Path, elsewhere: Path) -> None:
    """
    The installed C{eth} command shows its own help and, through twistd, the server's.
    """
    eth = str(venv / "bin" / "eth")
    result = run([eth, "--help"], elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout == legacy_cli.USAGE
    result = run([eth, "help", "server"], elsewhere)
    assert result.returncode == 0, result.stderr
    assert "Usage: twistd [options] eth-server [options]" in result.stdout
    assert "--use-mysql" in result.stdout


def test_eth_command_unknown(venv: Path, elsewhere: Path) -> None:
    """
    An unknown command or option ends C{eth} at once with one line of error and status 2.
    """
    for args in (["serve"], ["--bogus", "server"], ["--wait"]):
        result = run([str(venv / "bin" / "eth"), *args], elsewhere)
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert result.stderr.startswith("eth: "), result.stderr


# The older command line, translated.


def translate(*args: str, **environ: str) -> list[str]:
    return legacy_cli.translate(args, environ).argv


# The locks: exact versions within setup.cfg's ranges, what the venvs and the images install.


def locked(name: str) -> dict[str, tuple[str, str | None]]:
    """
    The pins of the lock file C{name}: canonical name to version and environment marker.
    """
    pins: dict[str, tuple[str, str | None]] = {}
    for line in (REPO_ROOT / name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            marker = str(requirement.marker) if requirement.marker else None
            pins[canonicalize_name(requirement.name)] = (specifier.version, marker)
    return pins


def setup_requirements(extra: str | None = None) -> list[Requirement]:
    """
    The requirements that setup.cfg declares: the package's own, or those of one extra.
    """
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    if extra is None:
        text = config["options"]["install_requires"]
    else:
        text = config["options.extras_require"][extra]
    return [Requirement(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements.lock", setup_requirements()),
        ("requirements-test.lock", setup_requirements() + setup_requirements("test")),
    ],
)
def test_lock_pins_within_setup_ranges(lock: str, requirements: list[Requirement]) -> None:
    """
    Every dependency that setup.cfg declares is pinned in the lock at a version its range
    allows: a range changed without C{make lock} fails here.
    """
    pins = locked(lock)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} pins no {name}: run make lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version} outside {requirement}: run make lock"
        )


def test_test_lock_keeps_the_runtime_versions() -> None:
    """
    The tests run with the very versions the images install: the test lock pins every package
    of the runtime lock at the same version.
    """
    runtime, test = locked("requirements.lock"), locked("requirements-test.lock")
    assert {name: test.get(name) for name in runtime} == runtime


def test_environment_is_the_lock() -> None:
    """
    The environment under test holds exactly the locked version of each dependency that
    applies to it (a venv made before the lock changed fails here: make venv).
    """
    for name, (version, marker) in locked("requirements-test.lock").items():
        if marker is None or Marker(marker).evaluate():
            assert metadata.version(name) == version, name


def test_eth_server_runs_twistd_in_the_foreground() -> None:
    """
    C{eth server} runs C{twistd -n eth-server} without a pid file, with the options given.
    """
    options = ["--host", "127.0.0.2", "--port", "9000"]
    argv = translate("server", *options)
    assert argv == ["twistd", "--nodaemon", "--pidfile=", "eth-server", *options]


def test_eth_global_options() -> None:
    """
    C{-v}/C{--verbose} becomes the plugin's C{--verbose}; C{--wait N} the server's wait for
    its stores, in either spelling; the client, which reconnects by itself, ignores it.
    """
    base = ["twistd", "--nodaemon", "--pidfile="]
    server = [*base, "eth-server", "--verbose", "--wait=10"]
    assert translate("-v", "--wait", "10", "server") == server
    assert translate("--verbose", "--wait=3", "server")[-2:] == ["--verbose", "--wait=3"]
    client = [*base, "eth-client", "--format", "json"]
    assert translate("--wait", "5", "client", "--format", "json") == client


def test_eth_client_sends_the_older_page() -> None:
    """
    C{eth client} sends the older client's HTML page unless a format is chosen on the
    command line or in C{ETH_FORMAT}.
    """
    older = ["eth-client", "--format=html", "--host", "h", "--port", "1"]
    assert translate("client", "--host", "h", "--port", "1")[3:] == older
    assert "--format=html" not in translate("client", "--format=json")
    assert "--format=html" not in translate("client", ETH_FORMAT="json")


def test_eth_older_environment() -> None:
    """
    The older command line's C{ETH_SERVER_<OPTION>} and C{ETH_CLIENT_<OPTION>} variables
    stand for the command's C{ETH_<OPTION>}, which wins when both are set.
    """
    env = {"ETH_SERVER_MYSQL_HOST": "db", "ETH_SERVER_PORT": "1", "ETH_PORT": "2"}
    invocation = legacy_cli.translate(["server"], env)
    assert invocation.environ["ETH_MYSQL_HOST"] == "db"
    assert invocation.environ["ETH_PORT"] == "2"
    invocation = legacy_cli.translate(["client"], {"ETH_SERVER_MYSQL_HOST": "db"})
    assert "ETH_MYSQL_HOST" not in invocation.environ


def test_eth_help() -> None:
    """
    C{eth}, C{eth --help} and C{eth help} show the usage; C{eth help client} the client's.
    """
    for args in ([], ["--help"], ["-h"], ["help"], ["-v", "help"]):
        invocation = legacy_cli.translate(args, {})
        assert (invocation.argv, invocation.text) == ([], legacy_cli.USAGE), args
    assert translate("help", "client")[3:] == ["eth-client", "--format=html", "--help"]
    with pytest.raises(legacy_cli.UsageError, match="command nope does not exist"):
        legacy_cli.translate(["help", "nope"], {})


# The health check.


def test_endpoint_url() -> None:
    """
    The health check asks a listening endpoint on the address it listens on, or on the
    loopback interface when it listens on every interface.
    """
    url = healthcheck.endpoint_url
    assert url("tcp:8080:interface=0.0.0.0", "/healthz") == "http://127.0.0.1:8080/healthz"
    assert url("tcp:port=8081", "/x") == "http://127.0.0.1:8081/x"
    assert url("8082", "/x") == "http://127.0.0.1:8082/x"
    assert url("tcp:80:interface=10.1.2.3", "/x") == "http://10.1.2.3:80/x"
    assert url("tcp6:8080:interface=\\:\\:", "/x") == "http://[::1]:8080/x"
    assert url("ssl:8443:privateKey=k.pem", "/x") == "https://127.0.0.1:8443/x"
    assert url("unix:/run/stats.sock", "/x") is None


def test_health_url_per_plugin(tmp_path: Path) -> None:
    """
    Which endpoint is checked follows the running plugin: its command line, else its
    environment, else nothing to check; ETH_HEALTHCHECK_URL overrides all.
    """
    for pid, argv in (
        ("1", ["/opt/ethtwisted/bin/python", "/opt/ethtwisted/bin/twistd", "-n", "eth-client"]),
        ("7", ["python", "-m", "ethtwisted.healthcheck"]),
    ):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    plugin = healthcheck.running_plugin(tmp_path)
    assert plugin == ("eth-client", [""])
    url = healthcheck.health_url
    assert url({}, plugin) is None
    assert url({"ETH_METRICS": "tcp:9100"}, plugin) == "http://127.0.0.1:9100/healthz"
    server = ("eth-server", ["--stats=tcp:81", "--listen", "tcp:9999"])
    assert url({"ETH_STATS": "tcp:80"}, server) == "http://127.0.0.1:81/healthz"
    assert url({"ETH_STATS": "tcp:80"}, ("eth-server", [])) == "http://127.0.0.1:80/healthz"
    stats = ("eth-stats", ["--listen", "tcp:8181"])
    assert url({"ETH_STATS": "tcp:80"}, stats) == "http://127.0.0.1:8181/healthz"
    assert url({}, ("eth-stats", [])) == "http://127.0.0.1:8080/healthz"
    assert url({}, ("eth-demo", [])) == "http://127.0.0.1:8080/healthz"
    everywhere = url({"ETH_STATS": "tcp:80:interface=0.0.0.0"}, ("eth-demo", []))
    assert everywhere is not None and everywhere.endswith(":80/healthz")
    assert url({"ETH_HEALTHCHECK_URL": "http://x/"}, server) == "http://x/"
    assert url({"ETH_STATS": "tcp:80"}, None) is None


def test_health_of_the_older_command_line(tmp_path: Path) -> None:
    """
    C{eth server} (the older command line) is recognised as eth-server.
    """
    (tmp_path / "1").mkdir()
    argv = ["/usr/bin/python3", "/opt/ethtwisted/bin/eth", "-v", "server", "--stats", "tcp:80"]
    (tmp_path / "1" / "cmdline").write_bytes("\0".join(argv).encode())
    assert healthcheck.running_plugin(tmp_path) == ("eth-server", ["--stats", "tcp:80"])


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    """
    A small HTTP server on the loopback interface: 200 on /healthz, 503 elsewhere.
    """
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_check(http_port: int) -> None:
    """
    The check passes on a 200 and gives the reason otherwise: another status, or nothing
    listening.
    """
    base = f"http://127.0.0.1:{http_port}"
    assert healthcheck.check(base + "/healthz") is None
    reason = healthcheck.check(base + "/other")
    assert reason is not None and "503" in reason
    reason = healthcheck.check(f"http://127.0.0.1:{free_port()}/healthz")
    assert reason is not None and "refused" in reason.lower()
