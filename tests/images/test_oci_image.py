"""Tests of scripts/oci_image.py: the archives match their Dockerfiles, are deterministic, and
anything the builder cannot reproduce is refused.

The drift tests read each Dockerfile's final stage with their own deliberately small reader and
read the archive back with tarfile/json only (not with oci_image.py), so a change on either side
that the other does not follow fails here. Run: python3 -m unittest discover -s tests/images
(or pytest tests/images).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "scripts", "oci_image.py")
IMAGES_SH = os.path.join(ROOT, "scripts", "images.sh")
PRODUCT_DOCKERFILES = sorted(glob.glob(os.path.join(ROOT, "docker", "*.Dockerfile")))
WORKLOAD_DOCKERFILE = os.path.join(ROOT, "tests", "e2e", "workload", "Dockerfile")
REF = "docker.io/civic-mcp/drift-test:e2e"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, TOOL, *args], check=False, capture_output=True, text=True, timeout=60
    )


def final_stage(path: str) -> list[tuple[str, str]]:
    """(KEYWORD, args) of the instructions after the last FROM; comments and continuations only."""
    logical, buf = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                buf += line[:-1]
                continue
            logical.append((buf + line).strip())
            buf = ""
    last_from = max(i for i, l in enumerate(logical) if l.upper().startswith("FROM "))
    out = []
    for l in logical[last_from + 1 :]:
        kw, _, rest = l.partition(" ")
        out.append((kw.upper(), rest.strip()))
    return out


def expected_from_dockerfile(path: str) -> dict:
    """What the final stage says the image is, for the instructions these Dockerfiles use."""
    exp: dict = {"files": {}, "User": None, "Entrypoint": None, "Cmd": None}
    for kw, rest in final_stage(path):
        if kw == "COPY":
            m = re.fullmatch(r"--from=(\S+)\s+(\S+)\s+(/\S+)", rest)
            assert m, f"{path}: this test reads only `COPY --from=stage /src /dest`, got {rest!r}"
            exp["files"][m.group(3).lstrip("/")] = m.group(2)
        elif kw == "USER":
            exp["User"] = rest
        elif kw in ("ENTRYPOINT", "CMD"):
            exp[kw.capitalize() if kw == "CMD" else "Entrypoint"] = json.loads(rest)
        else:
            raise AssertionError(
                f"{path}: this test does not know {kw}; teach it (and check the builder supports it)"
            )
    return exp


def read_archive(path: str) -> dict:
    """The archive read back with the standard library only."""
    with tarfile.open(path) as t:
        members = {
            m.name: (m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()
        }

    def blob(desc: dict) -> bytes:
        data = members["blobs/sha256/" + desc["digest"].split(":", 1)[1]][1]
        assert (
            len(data) == desc["size"]
            and hashlib.sha256(data).hexdigest() == desc["digest"].split(":", 1)[1]
        )
        return data

    assert json.loads(members["oci-layout"][1]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"][1])
    (desc,) = index["manifests"]
    manifest = json.loads(blob(desc))
    config = json.loads(blob(manifest["config"]))
    (layer_desc,) = manifest["layers"]
    layer = blob(layer_desc)
    with tarfile.open(fileobj=io.BytesIO(layer)) as lt:
        files = {
            m.name: (m, lt.extractfile(m).read() if m.isfile() else None) for m in lt.getmembers()
        }
    return {
        "members": members,
        "index_desc": desc,
        "manifest": manifest,
        "config": config,
        "layer_desc": layer_desc,
        "layer_digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
        "files": files,
        "docker_manifest": json.loads(members["manifest.json"][1]),
    }


class Tmp(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def file(self, name: str, content: bytes, mode: int = 0o755) -> str:
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def dockerfile(self, text: str) -> str:
        return self.file("Dockerfile", text.encode(), 0o644)

    def build(
        self, dockerfile: str, *extra: str, out: str = "image.tar"
    ) -> tuple[subprocess.CompletedProcess[str], str]:
        output = os.path.join(self.tmp, out)
        return (
            run_tool(
                "build", "--from-dockerfile", dockerfile, "--ref", REF, "--output", output, *extra
            ),
            output,
        )


class DockerfileDrift(Tmp):
    """Each Dockerfile's final stage is exactly what ends up in its archive."""

    def test_every_dockerfile_is_built_by_images_sh(self) -> None:
        self.assertEqual(len(PRODUCT_DOCKERFILES), 3, PRODUCT_DOCKERFILES)
        with open(IMAGES_SH, encoding="utf-8") as f:
            script = f.read()
        for path in PRODUCT_DOCKERFILES + [WORKLOAD_DOCKERFILE]:
            self.assertIn(
                os.path.relpath(path, ROOT), script, f"scripts/images.sh does not build {path}"
            )

    def check_dockerfile(self, path: str) -> None:
        exp = expected_from_dockerfile(path)
        self.assertTrue(exp["files"], f"{path} copies nothing")
        context, contents = [], {}
        for dest, src in exp["files"].items():
            data = f"dummy {dest} from {os.path.basename(path)}\n".encode()
            contents[dest] = data
            # 0775: the builder must normalise the mode, not copy the host's umask.
            context += ["--context-file", f"{src}={self.file('ctx' + src, data, 0o775)}"]
        proc, out = self.build(path, *context)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = read_archive(out)
        self.assertEqual(sorted(got["files"]), sorted(exp["files"]))
        for name, (info, data) in got["files"].items():
            self.assertTrue(info.isfile(), name)
            self.assertEqual((info.uid, info.gid), (0, 0), f"{name} must be root-owned like COPY")
            self.assertEqual(info.mode, 0o755, name)
            self.assertEqual(info.mtime, 0, name)
            self.assertEqual(data, contents[name])
        cfg = got["config"]
        self.assertEqual((cfg["os"], cfg["architecture"]), ("linux", "amd64"))
        self.assertEqual(cfg["config"].get("User"), exp["User"])
        self.assertEqual(cfg["config"].get("Entrypoint"), exp["Entrypoint"])
        self.assertEqual(cfg["config"].get("Cmd"), exp["Cmd"])
        self.assertEqual(cfg["rootfs"], {"type": "layers", "diff_ids": [got["layer_digest"]]})
        self.assertEqual(got["layer_desc"]["mediaType"], "application/vnd.oci.image.layer.v1.tar")
        ann = got["index_desc"]["annotations"]
        self.assertEqual(ann["org.opencontainers.image.ref.name"], REF)
        self.assertEqual(ann["io.containerd.image.name"], REF)
        self.assertEqual(got["index_desc"]["platform"], {"architecture": "amd64", "os": "linux"})
        (dm,) = got["docker_manifest"]
        self.assertEqual(dm["RepoTags"], [REF])
        self.assertEqual(
            dm["Config"], "blobs/sha256/" + got["manifest"]["config"]["digest"].split(":")[1]
        )
        # The binary a Rust image copies is the one its own cargo build produces.
        if "/docker/" in path:
            pkg_bin = run_tool("cargo-target", path)
            self.assertEqual(pkg_bin.returncode, 0, pkg_bin.stderr)
            _, binary = pkg_bin.stdout.split()
            self.assertEqual(exp["Entrypoint"], [f"/{binary}"])
            self.assertEqual(list(exp["files"].values()), [f"/out/{binary}"])

    def test_product_dockerfiles(self) -> None:
        for path in PRODUCT_DOCKERFILES:
            with self.subTest(dockerfile=os.path.basename(path)):
                self.check_dockerfile(path)

    def test_workload_dockerfile(self) -> None:
        self.check_dockerfile(WORKLOAD_DOCKERFILE)

    def test_reader_follows_an_edited_dockerfile(self) -> None:
        # A changed USER/ENTRYPOINT in a copy of a product Dockerfile shows up in the archive.
        with open(PRODUCT_DOCKERFILES[0], encoding="utf-8") as f:
            text = f.read()
        edited = re.sub(r"^USER .*$", "USER 1234:5678", text, flags=re.MULTILINE)
        edited = re.sub(
            r"^ENTRYPOINT .*$", 'ENTRYPOINT ["/other", "--flag"]', edited, flags=re.MULTILINE
        )
        path = self.dockerfile(edited)
        self.check_dockerfile(path)
        self.assertEqual(expected_from_dockerfile(path)["User"], "1234:5678")


class Determinism(Tmp):
    def test_same_inputs_same_bytes(self) -> None:
        df = self.dockerfile(
            'FROM golang AS build\nFROM scratch\nCOPY --from=build /out/app /app\nUSER 65532:65532\nENTRYPOINT ["/app"]\n'
        )
        a = self.file("a/app", b"\x7fELF same bytes", 0o755)
        b = self.file("b/app", b"\x7fELF same bytes", 0o775)
        os.utime(b, (1_000_000, 1_000_000))
        p1, out1 = self.build(df, "--context-file", f"/out/app={a}", out="one.tar")
        p2, out2 = self.build(df, "--context-file", f"/out/app={b}", out="two.tar")
        self.assertEqual((p1.returncode, p2.returncode), (0, 0), p1.stderr + p2.stderr)
        with open(out1, "rb") as f1, open(out2, "rb") as f2:
            self.assertEqual(f1.read(), f2.read())
        for info, _ in read_archive(out1)["members"].values():
            self.assertEqual(
                (info.mtime, info.uid, info.gid, info.uname, info.gname), (0, 0, 0, "", "")
            )
        # Different content, different archive.
        c = self.file("c/app", b"\x7fELF other bytes", 0o755)
        p3, out3 = self.build(df, "--context-file", f"/out/app={c}", out="three.tar")
        self.assertEqual(p3.returncode, 0, p3.stderr)
        with open(out1, "rb") as f1, open(out3, "rb") as f3:
            self.assertNotEqual(f1.read(), f3.read())

    def test_source_date_epoch(self) -> None:
        df = self.dockerfile("FROM scratch\nCOPY app /app\n")
        app = self.file("app", b"x", 0o644)
        proc, out = self.build(
            df, "--context-file", f"app={app}", "--source-date-epoch", "1700000000"
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = read_archive(out)
        self.assertEqual(got["files"]["app"][0].mtime, 1700000000)
        self.assertEqual(got["files"]["app"][0].mode, 0o644)
        self.assertEqual(got["config"]["created"], "2023-11-14T22:13:20Z")


class Supported(Tmp):
    def test_config_instructions(self) -> None:
        df = self.dockerfile(
            "# syntax=docker/dockerfile:1.7\n"
            "ARG BASE=scratch\n"
            "FROM debian AS build\nRUN make\n"
            "FROM ${BASE}\n"
            "ARG NAME=tool\n"
            'ENV MODE=fast GREETING="hello world" \\\n    BIN=/usr/local/bin/${NAME}\n'
            'LABEL org.opencontainers.image.title="$NAME"\n'
            "COPY --from=build --chown=10:20 --chmod=0750 /out/${NAME} /usr/local/bin/\n"
            'COPY ["conf.txt", "/etc/tool.conf"]\n'
            "EXPOSE 8080 53/udp\nSTOPSIGNAL SIGINT\nUSER 10\n"
            'ENTRYPOINT ["/usr/local/bin/tool"]\nCMD ["--help"]\n'
        )
        tool = self.file("tool", b"bin")
        conf = self.file("conf.txt", b"conf", 0o600)
        proc, out = self.build(
            df, "--context-file", f"/out/tool={tool}", "--context-file", f"conf.txt={conf}"
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = read_archive(out)
        files = {n: (i.type, i.uid, i.gid, i.mode) for n, (i, _) in got["files"].items()}
        self.assertEqual(
            files,
            {
                "etc": (tarfile.DIRTYPE, 0, 0, 0o755),
                "etc/tool.conf": (tarfile.REGTYPE, 0, 0, 0o644),
                "usr": (tarfile.DIRTYPE, 0, 0, 0o755),
                "usr/local": (tarfile.DIRTYPE, 0, 0, 0o755),
                "usr/local/bin": (tarfile.DIRTYPE, 0, 0, 0o755),
                "usr/local/bin/tool": (tarfile.REGTYPE, 10, 20, 0o750),
            },
        )
        cfg = got["config"]["config"]
        self.assertEqual(
            cfg["Env"],
            [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "MODE=fast",
                "GREETING=hello world",
                "BIN=/usr/local/bin/tool",
            ],
        )
        self.assertEqual(cfg["Labels"], {"org.opencontainers.image.title": "tool"})
        self.assertEqual(cfg["ExposedPorts"], {"8080/tcp": {}, "53/udp": {}})
        self.assertEqual((cfg["StopSignal"], cfg["User"], cfg["Cmd"]), ("SIGINT", "10", ["--help"]))

    def test_upstream_pause_style_dockerfile(self) -> None:
        # The shape of Kubernetes' build/pause/Dockerfile: the base and arch come from build args.
        df = self.dockerfile(
            'ARG BASE\nFROM ${BASE}\nARG ARCH\nADD bin/pause-linux-${ARCH} /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
        )
        pause = self.file("pause", b"\x7fELF pause")
        proc, out = self.build(
            df,
            "--build-arg",
            "BASE=scratch",
            "--build-arg",
            "ARCH=amd64",
            "--context-file",
            f"bin/pause-linux-amd64={pause}",
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        got = read_archive(out)
        self.assertEqual(list(got["files"]), ["pause"])
        self.assertEqual(got["config"]["config"]["User"], "65535:65535")
        # Without the build arg the base is unknown: refused, not guessed.
        proc, _ = self.build(
            df,
            "--build-arg",
            "ARCH=amd64",
            "--context-file",
            f"bin/pause-linux-amd64={pause}",
            out="x.tar",
        )
        self.assertEqual(proc.returncode, 1)
        self.assertIn("$BASE is not set", proc.stderr)

    def test_unchanged_archive_is_not_rewritten(self) -> None:
        df = self.dockerfile("FROM scratch\nCOPY app /app\n")
        app = self.file("app", b"x")
        proc, out = self.build(df, "--context-file", f"app={app}")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        os.utime(out, (1, 1))
        proc, out = self.build(df, "--context-file", f"app={app}")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(os.stat(out).st_mtime, 1)

    def test_inspect_verifies(self) -> None:
        df = self.dockerfile('FROM scratch\nCOPY app /app\nENTRYPOINT ["/app"]\n')
        proc, out = self.build(df, "--context-file", f"app={self.file('app', b'x')}")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        info = run_tool("inspect", out)
        self.assertEqual(info.returncode, 0, info.stderr)
        data = json.loads(info.stdout)
        self.assertEqual((data["ref"], data["oci_ref_name"], data["repo_tags"]), (REF, REF, [REF]))


class Refused(Tmp):
    """Anything the builder cannot reproduce exactly fails loudly and writes nothing."""

    BASE = "FROM rust AS build\nRUN cargo build\nFROM scratch\nCOPY --from=build /out/app /app\n"

    def refused(self, final_lines: str, expect: str, *extra: str, base: str | None = None) -> None:
        df = self.dockerfile((self.BASE if base is None else base) + final_lines)
        app = self.file("app", b"\x7fELF")
        # A fresh output name per case: one wrongly accepted case must not hide the next.
        self.case = getattr(self, "case", 0) + 1
        proc, out = self.build(
            df, "--context-file", f"/out/app={app}", *extra, out=f"refused-{self.case}.tar"
        )
        self.assertEqual(proc.returncode, 1, f"accepted:\n{final_lines}\n{proc.stderr}")
        self.assertIn(expect, proc.stderr)
        self.assertFalse(os.path.exists(out), "a refused build must not leave an archive")

    def test_unsupported_instructions(self) -> None:
        cases = {
            "RUN echo hi\n": "RUN in the final stage is not supported",
            "WORKDIR /app\n": "WORKDIR in the final stage is not supported",
            "VOLUME /data\n": "VOLUME in the final stage is not supported",
            "HEALTHCHECK NONE\n": "HEALTHCHECK in the final stage is not supported",
            'SHELL ["/bin/sh", "-c"]\n': "SHELL in the final stage is not supported",
            "ONBUILD RUN x\n": "ONBUILD in the final stage is not supported",
            "FROBNICATE x\n": "FROBNICATE in the final stage is not supported",
            "ENV LEGACY value\n": "KEY=VALUE",
            "ENTRYPOINT /app --flag\n": "exec (JSON array) form",
            "CMD run\n": "exec (JSON array) form",
            "USER $NOBODY\n": "$NOBODY is not set",
            "ENV X=${Y/a/b}\n": "unsupported variable expansion",
            "COPY --from=build /out/* /bin/\n": "wildcards are not supported",
            "COPY --from=build /out/ /bin/\n": "directory sources are not supported",
            "COPY --from=build --chown=nonroot /out/app /x\n": "numeric uid",
            "COPY --from=build --exclude=*.md /out/app /x\n": "--exclude is not supported",
            "COPY --from=docker.io/library/busybox /bin/sh /sh\n": "does not name an earlier stage",
            "COPY <<EOF /x\nhi\nEOF\n": "heredocs",
            "ADD https://example.com/x /x\n": "URL",
            "COPY --from=build /out/app /out/more /dir\n": "must end with /",
        }
        for lines, expect in cases.items():
            with self.subTest(lines=lines):
                self.refused(lines, expect)

    def test_non_scratch_final_stage(self) -> None:
        self.refused(
            "",
            "must be FROM scratch",
            base="FROM rust AS build\nFROM gcr.io/distroless/static\nCOPY --from=build /out/app /app\n",
        )

    def test_context_files_must_match(self) -> None:
        # A source without a host file, and a host file nothing copies: both are drift.
        self.refused("COPY --from=build /out/other /other\n", "no --context-file /out/other")
        self.refused(
            "",
            "not used by the final stage",
            "--context-file",
            f"/out/unused={self.file('u', b'u')}",
        )

    def test_add_of_an_archive(self) -> None:
        df = self.dockerfile("FROM scratch\nADD layer.tar /\n")
        tar_path = os.path.join(self.tmp, "layer.tar")
        with tarfile.open(tar_path, "w") as t:
            t.add(self.file("inner", b"x"), arcname="inner")
        proc, _ = self.build(df, "--context-file", f"layer.tar={tar_path}")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("ADD would unpack", proc.stderr)

    def test_build_arg_nobody_declares(self) -> None:
        self.refused("", "not declared", "--build-arg", "TYPO=1")

    def test_short_reference(self) -> None:
        df = self.dockerfile("FROM scratch\nCOPY app /app\n")
        output = os.path.join(self.tmp, "x.tar")
        proc = run_tool(
            "build",
            "--from-dockerfile",
            df,
            "--ref",
            "civic-sidecar:e2e",
            "--output",
            output,
            "--context-file",
            f"app={self.file('app', b'x')}",
        )
        self.assertEqual(proc.returncode, 1)
        self.assertIn("fully qualified", proc.stderr)


if __name__ == "__main__":
    unittest.main()
