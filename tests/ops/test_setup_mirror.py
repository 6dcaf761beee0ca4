"""Debian mirror detection of scripts/setup.sh (`--print-mirror`).

Each test builds a fake apt root (a directory holding etc/apt/...) and points the script at
it with CLOUDLENS_APT_ROOT. `--print-mirror` only reads files: no root, no apt, no lock.
Run with scripts/ops-tests.sh -k mirror (or pytest in any venv: stdlib + pytest only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup.sh"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# /etc/apt/sources.list.d/debian.sources of the official debian:bookworm container image.
CONTAINER_DEBIAN_SOURCES = f"""\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {DEBIAN_KEYRING}

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {DEBIAN_KEYRING}
"""

# /etc/apt/sources.list as the Debian 12 installer writes it (netinst, with a network mirror).
INSTALLER_SOURCES_LIST = """\
#deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 NETINST with firmware 20240210-11:27]/ bookworm contrib main non-free-firmware

deb http://ftp.de.debian.org/debian/ bookworm main non-free-firmware
deb-src http://ftp.de.debian.org/debian/ bookworm main non-free-firmware

deb http://security.debian.org/debian-security bookworm-security main non-free-firmware
deb-src http://security.debian.org/debian-security bookworm-security main non-free-firmware

# bookworm-updates, to get updates before a point release is made;
# see https://www.debian.org/doc/manuals/debian-reference/ch02.en.html#_updates_and_backports
deb http://ftp.de.debian.org/debian/ bookworm-updates main non-free-firmware
deb-src http://ftp.de.debian.org/debian/ bookworm-updates main non-free-firmware
"""


def make_root(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake apt root: {"sources.list": ..., "sources.list.d/x.list": ...} under etc/apt."""
    root = tmp_path / "aptroot"
    (root / "etc/apt/sources.list.d").mkdir(parents=True)
    for rel, text in files.items():
        path = root / "etc/apt" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def print_mirror(tmp_path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """Run `setup.sh --print-mirror` against root, with apt/dpkg/flock replaced by stubs that
    leave a marker, and a lock file path of its own: the mode must use none of them."""
    stubs = tmp_path / "stubs"
    marker = tmp_path / "touched-apt"
    stubs.mkdir(exist_ok=True)
    for tool in ("apt-get", "apt-config", "apt-cache", "dpkg-query", "flock"):
        stub = stubs / tool
        stub.write_text(f"#!/bin/sh\necho {tool} >> '{marker}'\nexit 97\n")
        stub.chmod(0o755)
    lock = tmp_path / "setup.lock"
    env = dict(os.environ)
    env.update(
        PATH=f"{stubs}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        CLOUDLENS_APT_ROOT=str(root),
        CLOUDLENS_SETUP_LOCK=str(lock),
        CLOUDLENS_BUILD_DIR=str(tmp_path / "build"),
    )
    proc = subprocess.run(
        ["bash", str(SETUP), "--print-mirror"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert not marker.exists(), f"--print-mirror ran {marker.read_text()!r}"
    assert not lock.exists(), "--print-mirror took the setup lock"
    assert not (tmp_path / "build").exists(), "--print-mirror created the build directory"
    return proc


def assert_mirror(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    proc = print_mirror(tmp_path, make_root(tmp_path, files))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n", (proc.stdout, proc.stderr)


def assert_no_mirror(tmp_path: Path, files: dict[str, str]) -> None:
    proc = print_mirror(tmp_path, make_root(tmp_path, files))
    assert proc.returncode != 0, proc.stdout
    assert proc.stdout == ""
    assert "cannot find the Debian mirror" in proc.stderr


# --------------------------------------------------------------------------------------


def test_setup_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(SETUP)], check=True, timeout=30)


def test_deb822_container_image(tmp_path: Path) -> None:
    assert_mirror(
        tmp_path,
        {"sources.list.d/debian.sources": CONTAINER_DEBIAN_SOURCES},
        "http://deb.debian.org/debian",
    )


def test_deb822_security_stanza_first_is_skipped(tmp_path: Path) -> None:
    stanzas = CONTAINER_DEBIAN_SOURCES.split("\n\n")
    text = stanzas[1].rstrip("\n") + "\n\n" + stanzas[0] + "\n"
    assert_mirror(tmp_path, {"sources.list.d/debian.sources": text}, "http://deb.debian.org/debian")


def test_deb822_details(tmp_path: Path) -> None:
    """Case-insensitive field names, a disabled stanza, several URIs, multi-line fields, CRLF."""
    text = (
        "Types: deb\n"
        "URIs: http://disabled.example.org/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n"
        "\n"
        "types: deb-src deb\n"
        "uris: https://mirror.example.net/debian/\n"
        "  http://second.example.net/debian\n"
        "suites: bookworm-updates\n"
        "  bookworm\n"
        "components: contrib main\r\n"
        f"signed-by: {DEBIAN_KEYRING}\n"
    )
    assert_mirror(
        tmp_path, {"sources.list.d/debian.sources": text}, "https://mirror.example.net/debian"
    )


def test_classic_installer_sources_list(tmp_path: Path) -> None:
    assert_mirror(
        tmp_path, {"sources.list": INSTALLER_SOURCES_LIST}, "http://ftp.de.debian.org/debian"
    )


def test_classic_security_and_deb_src_first(tmp_path: Path) -> None:
    text = (
        "# security first, then only a deb-src line for the main suite\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb http://deb.debian.org/debian-security/ bookworm-security main\n"
        "deb http://deb.debian.org/debian bookworm-updates main\n"
        "deb-src http://deb.debian.org/debian bookworm main   # the source index\n"
    )
    assert_mirror(tmp_path, {"sources.list": text}, "http://deb.debian.org/debian")


def test_classic_dvd_install_skips_cdrom(tmp_path: Path) -> None:
    text = (
        "deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 DVD Binary-1 with "
        "firmware 20240210-11:28]/ bookworm contrib main non-free-firmware\n"
        "\n"
        "deb http://deb.debian.org/debian/ bookworm main non-free-firmware\n"
    )
    assert_mirror(tmp_path, {"sources.list": text}, "http://deb.debian.org/debian")


def test_classic_with_signed_by_options(tmp_path: Path) -> None:
    text = (
        f"deb [signed-by={DEBIAN_KEYRING}] https://mirror.example.org/debian/ bookworm main contrib\n"
        f"deb [ arch=amd64,arm64 signed-by={DEBIAN_KEYRING} ] "
        "https://security.debian.org/debian-security bookworm-security main\n"
    )
    assert_mirror(tmp_path, {"sources.list": text}, "https://mirror.example.org/debian")


def test_classic_stable_suite(tmp_path: Path) -> None:
    text = "deb [arch=amd64] http://deb.debian.org/debian stable main\n"
    assert_mirror(tmp_path, {"sources.list": text}, "http://deb.debian.org/debian")


def test_list_file_in_sources_list_d(tmp_path: Path) -> None:
    files = {
        "sources.list": "# moved to sources.list.d\n",
        "sources.list.d/debian.list": "deb http://ftp.nl.debian.org/debian bookworm main\n",
        # Names apt does not read must be ignored.
        "sources.list.d/old.list.disabled": "deb http://wrong.example.org/debian bookworm main\n",
        "sources.list.d/debian.list.dpkg-old": "deb http://old.example.org/debian bookworm main\n",
    }
    assert_mirror(tmp_path, files, "http://ftp.nl.debian.org/debian")


def test_non_debian_repos_not_chosen(tmp_path: Path) -> None:
    """Third-party repos read before the Debian mirror, some with suite bookworm/stable and
    component main, must not be chosen."""
    files = {
        "sources.list.d/a-pgdg.list": (
            "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] "
            "https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main\n"
        ),
        "sources.list.d/b-sury.list": (
            "deb [signed-by=/usr/share/keyrings/deb.sury.org-php.gpg] "
            "https://packages.sury.org/php/ bookworm main\n"
        ),
        "sources.list.d/c-vscode.sources": (
            "Types: deb\n"
            "URIs: https://packages.microsoft.com/repos/code\n"
            "Suites: stable\n"
            "Components: main\n"
            "Architectures: amd64,arm64,armhf\n"
            "Signed-By: /usr/share/keyrings/microsoft.gpg\n"
        ),
        "sources.list.d/d-docker.list": (
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] "
            "https://download.docker.com/linux/debian bookworm stable\n"
        ),
        "sources.list.d/debian.sources": CONTAINER_DEBIAN_SOURCES,
    }
    assert_mirror(tmp_path, files, "http://deb.debian.org/debian")


def test_unsigned_debian_url_preferred_over_unsigned_third_party(tmp_path: Path) -> None:
    text = (
        "deb https://packages.sury.org/php/ bookworm main\n"
        "deb http://deb.debian.org/debian bookworm main\n"
    )
    assert_mirror(tmp_path, {"sources.list": text}, "http://deb.debian.org/debian")


def test_local_mirror_without_debian_in_url(tmp_path: Path) -> None:
    text = "deb http://10.0.0.5/mirror/ bookworm main\n"
    assert_mirror(tmp_path, {"sources.list": text}, "http://10.0.0.5/mirror")


def test_no_mirror_at_all(tmp_path: Path) -> None:
    assert_no_mirror(tmp_path, {})


def test_no_debian_mirror_only_others(tmp_path: Path) -> None:
    files = {
        "sources.list": (
            "# deb http://deb.debian.org/debian bookworm main\n"
            "deb http://security.debian.org/debian-security bookworm-security main\n"
        ),
        "sources.list.d/debian.sources": (
            "Types: deb\n"
            "URIs: http://deb.debian.org/debian\n"
            "Suites: bookworm\n"
            "Components: main\n"
            "Enabled: no\n"
        ),
        "sources.list.d/pgdg.list": (
            "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] "
            "https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main\n"
        ),
        "sources.list.d/vscode.list": (
            "deb [signed-by=/usr/share/keyrings/microsoft.gpg] "
            "https://packages.microsoft.com/repos/code stable main\n"
        ),
        "sources.list.d/nodesource.sources.disabled": (
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: bookworm\n"
            "Components: main\n"
        ),
    }
    assert_no_mirror(tmp_path, files)


def test_missing_apt_root(tmp_path: Path) -> None:
    proc = print_mirror(tmp_path, tmp_path / "does-not-exist")
    assert proc.returncode != 0
    assert "cannot find the Debian mirror" in proc.stderr


def test_unknown_argument_is_rejected(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SETUP), "--no-such-option"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
