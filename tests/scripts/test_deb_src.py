"""scripts/deb-src-from-apt: deb-src entries from a machine's own apt sources."""
import pathlib
import subprocess

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "deb-src-from-apt"


def run(tmp_path, files):
    paths = []
    for name, text in files.items():
        p = tmp_path / name
        p.write_text(text)
        paths.append(str(p))
    out = tmp_path / "out"
    done = subprocess.run([str(SCRIPT), str(out), *paths], capture_output=True, text=True)
    return done, {p.name: p.read_text() for p in sorted(out.glob("*"))} if out.exists() else {}


def test_one_line_entries_keep_uri_suite_components_and_options(tmp_path):
    done, out = run(tmp_path, {"sources.list": (
        "# a comment\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://mirror.example/debian bookworm main contrib\n"
        "deb http://mirror.example/debian-security bookworm-security main # trailing\n"
        "deb-src http://already.example/debian bookworm main\n")})
    assert done.returncode == 0 and done.stdout.strip() == "2"
    assert out == {"00-sources.list": (
        "deb-src [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian-security bookworm-security main\n")}


def test_deb822_stanzas_become_deb_src_with_every_field(tmp_path):
    done, out = run(tmp_path, {"debian.sources": (
        "Types: deb\n"
        "# snapshot comment\n"
        "URIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://off.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Enabled: no\n"
        "\n"
        "Types: deb deb-src\n"
        "URIs: http://inline.example/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Signed-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        " .\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n")})
    assert done.returncode == 0 and done.stdout.strip() == "2"
    text = out["00-debian.sources"]
    first, second = text.strip().split("\n\n")
    assert first == ("Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
                     "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg")
    assert second.startswith("Types: deb-src\nURIs: http://inline.example/debian\n")
    assert "-----BEGIN PGP PUBLIC KEY BLOCK-----" in second and "off.example" not in text


def test_no_deb_entries_is_an_error(tmp_path):
    done, out = run(tmp_path, {"empty.list": "# nothing\n"})
    assert done.returncode == 1 and out == {}
