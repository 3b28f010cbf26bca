#!/usr/bin/env python3
"""Deterministic OCI image archives from the final stage of a Dockerfile, without Docker.

The product images are `FROM scratch` plus copied static binaries and config, so the final stage
is all an archive needs: the build stages are replaced by binaries built on the host and named
with --context-file. The final stage is parsed, never restated, so an image cannot drift from its
Dockerfile; an instruction this builder cannot reproduce exactly is refused, not skipped.

Supported in the final stage: FROM scratch, COPY/ADD of single files (COPY --from, --chown with
numeric ids, --chmod, --link; ADD only of local non-archive files), USER, ENTRYPOINT and CMD in
exec (JSON) form, ENV and LABEL in KEY=VALUE form, ARG, EXPOSE, STOPSIGNAL. Everything else
(RUN, WORKDIR, VOLUME, SHELL, HEALTHCHECK, ONBUILD, heredocs, wildcards, directories...) fails.

Output: one tar holding an OCI image layout (oci-layout, index.json, blobs/sha256/...) and a
Docker-style manifest.json, with one uncompressed layer. All timestamps are SOURCE_DATE_EPOCH
(default 0), all entries owned by 0:0 unless --chown says otherwise, modes normalised (0755 for
executables, 0644 otherwise) so the umask of the building machine does not leak in. The same
inputs give a byte-identical archive. `ctr -n k8s.io images import` and `docker load` read it.

Subcommands:
  build --from-dockerfile F --ref NAME --output OUT [--context-file SRC=PATH]... [--build-arg K=V]...
  spec  --from-dockerfile F [--build-arg K=V]...   the parsed final stage as JSON
  cargo-target F                                   "<package> <bin>" of the build stage's cargo build
  inspect ARCHIVE                                  verify an archive and print its contents as JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import posixpath
import re
import sys
import tarfile
from typing import Any

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
ANNOTATION_REF = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
# BuildKit gives every Linux image this PATH, even FROM scratch; kept so `docker build` and this
# builder produce the same config.
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Instructions that only exist before/outside the final stage's semantics we reproduce.
KNOWN_UNSUPPORTED = {
    "RUN": "it needs a root filesystem and a shell",
    "WORKDIR": "it creates a directory whose ownership depends on the BuildKit version",
    "VOLUME": "volumes are not part of these images",
    "SHELL": "scratch images have no shell",
    "HEALTHCHECK": "Kubernetes ignores it; use probes",
    "ONBUILD": "triggers are not reproduced",
    "MAINTAINER": "deprecated; use LABEL",
}


class DockerfileError(Exception):
    """The Dockerfile (or the inputs given for it) cannot be turned into an exact image."""


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclasses.dataclass
class FileEntry:
    """One file the final stage puts into the image."""

    dest: str  # absolute path in the image
    source: str  # the source as the Dockerfile names it
    stage: str | None  # COPY --from stage, None for the build context
    uid: int = 0
    gid: int = 0
    mode: int | None = None  # --chmod; None: from the host file's executable bit
    instruction: str = "COPY"


@dataclasses.dataclass
class ImageSpec:
    dockerfile: str
    files: list[FileEntry]
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = dataclasses.field(default_factory=lambda: [DEFAULT_PATH_ENV])
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    exposed_ports: dict[str, dict] = dataclasses.field(default_factory=dict)
    stop_signal: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "files": [
                {
                    "dest": f.dest,
                    "source": f.source,
                    "from": f.stage,
                    "uid": f.uid,
                    "gid": f.gid,
                    "mode": None if f.mode is None else f"{f.mode:04o}",
                }
                for f in self.files
            ],
            "config": image_config_body(self),
        }


# --- Dockerfile text -----------------------------------------------------------------------------


def logical_lines(text: str, path: str) -> list[Instruction]:
    """Instructions with their line numbers: directives, comments, continuations handled."""
    lines = text.splitlines()
    i = 0
    # Parser directives: only leading `# key=value` comments.
    while i < len(lines):
        m = re.match(r"^\s*#\s*([A-Za-z]+)\s*=\s*(.*?)\s*$", lines[i])
        if not m:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key == "escape" and value != "\\":
            raise DockerfileError(f"{path}:{i + 1}: escape directive {value!r} is not supported")
        i += 1
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n in range(i, len(lines)):
        raw = lines[n]
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and (not stripped or stripped.startswith("#")):
            continue  # empty and comment lines inside a continuation are dropped, as in BuildKit
        if not buf:
            start = n + 1
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        joined = "".join(buf).strip()
        buf = []
        m = re.match(r"^(\S+)\s*(.*)$", joined, re.DOTALL)
        assert m
        out.append(Instruction(m.group(1).upper(), m.group(2).strip(), start))
    if buf:
        raise DockerfileError(f"{path}:{start}: the file ends inside a line continuation")
    for ins in out:
        if ins.keyword in ("RUN", "COPY", "ADD") and re.search(r"<<-?[\"']?[A-Za-z_]", ins.args):
            raise DockerfileError(f"{path}:{ins.line}: heredocs are not supported by this parser")
    return out


_VAR_RE = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def _substitute(text: str, scope: dict[str, str | None], where: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        op, word = m.group(2), m.group(3)
        value = scope.get(name)
        if op == ":-":
            return value if value else _substitute(word, scope, where)
        if op == ":+":
            return _substitute(word, scope, where) if value else ""
        if value is None:
            # Docker would substitute "" silently; an unset value here is almost always a
            # missing --build-arg, so fail instead of building a different image.
            raise DockerfileError(
                f"{where}: ${name} is not set (declare it with ARG/ENV or pass --build-arg)"
            )
        return value

    for m in re.finditer(r"\$\{", text):
        if not _VAR_RE.match(text, m.start()):
            raise DockerfileError(
                f"{where}: unsupported variable expansion in {text!r} (only $N, ${{N}}, ${{N:-word}}, ${{N:+word}})"
            )
    return _VAR_RE.sub(repl, text)


def words(text: str, scope: dict[str, str | None], where: str) -> list[str]:
    """Dockerfile word splitting: quotes, backslash escapes and $ substitution (not in '...')."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            if have:
                out.append("".join(cur))
                cur, have = [], False
            i += 1
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise DockerfileError(f"{where}: unterminated single quote")
            cur.append(text[i + 1 : j])
            have, i = True, j + 1
        elif c == '"':
            j, part = i + 1, []
            while j < len(text) and text[j] != '"':
                if text[j] == "\\" and j + 1 < len(text) and text[j + 1] in '"\\$':
                    part.append("\x00" if text[j + 1] == "$" else text[j + 1])
                    j += 2
                else:
                    part.append(text[j])
                    j += 1
            if j >= len(text):
                raise DockerfileError(f"{where}: unterminated double quote")
            cur.append(_substitute("".join(part), scope, where).replace("\x00", "$"))
            have, i = True, j + 1
        elif c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            have, i = True, i + 2
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in "'\"\\":
                j += 1
            cur.append(_substitute(text[i:j], scope, where))
            have, i = True, j
    if have:
        out.append("".join(cur))
    return out


def key_values(ins: Instruction, scope: dict[str, str | None], where: str) -> list[tuple[str, str]]:
    pairs = []
    for w in words(ins.args, scope, where):
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise DockerfileError(
                f"{where}: {ins.keyword} must be KEY=VALUE pairs (the legacy `{ins.keyword} KEY VALUE` form is not supported)"
            )
        pairs.append((key, value))
    if not pairs:
        raise DockerfileError(f"{where}: {ins.keyword} without a value")
    return pairs


def exec_form(ins: Instruction, where: str) -> list[str]:
    try:
        value = json.loads(ins.args)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DockerfileError(
            f"{where}: {ins.keyword} must use the exec (JSON array) form: the shell form needs /bin/sh, which these images do not have"
        )
    return value


def split_stages(
    instructions: list[Instruction], path: str
) -> tuple[list[Instruction], list[list[Instruction]]]:
    """(global instructions before the first FROM, stages each starting with its FROM)."""
    glob: list[Instruction] = []
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([ins])
        elif stages:
            stages[-1].append(ins)
        elif ins.keyword == "ARG":
            glob.append(ins)
        else:
            raise DockerfileError(f"{path}:{ins.line}: {ins.keyword} before the first FROM")
    if not stages:
        raise DockerfileError(f"{path}: no FROM instruction")
    return glob, stages


def declare_args(
    ins: Instruction,
    scope: dict[str, str | None],
    build_args: dict[str, str],
    defaults: dict[str, str | None],
    used: set[str],
    where: str,
) -> None:
    for w in words(ins.args, scope, where):
        name, eq, default = w.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise DockerfileError(f"{where}: bad ARG name {name!r}")
        if name in build_args:
            used.add(name)
            scope[name] = build_args[name]
        elif eq:
            scope[name] = default
        else:
            scope[name] = defaults.get(name)


def parse_dockerfile(path: str, build_args: dict[str, str] | None = None) -> ImageSpec:
    """The final stage of `path` as an image spec; DockerfileError on anything not reproducible."""
    build_args = dict(build_args or {})
    with open(path, encoding="utf-8") as f:
        instructions = logical_lines(f.read(), path)
    glob, stages = split_stages(instructions, path)
    used: set[str] = set()
    global_scope: dict[str, str | None] = {}
    for ins in glob:
        declare_args(ins, global_scope, build_args, {}, used, f"{path}:{ins.line}")
    stage_names = set()
    for stage in stages[:-1]:
        m = re.search(r"\s[Aa][Ss]\s+(\S+)\s*$", stage[0].args)
        if m:
            stage_names.add(m.group(1).lower())
    final = stages[-1]
    frm = final[0]
    where = f"{path}:{frm.line}"
    from_words = words(frm.args, global_scope, where)
    if any(w.startswith("--") for w in from_words):
        raise DockerfileError(f"{where}: FROM flags are not supported in the final stage")
    if len(from_words) not in (1, 3) or (len(from_words) == 3 and from_words[1].lower() != "as"):
        raise DockerfileError(f"{where}: cannot parse FROM {frm.args!r}")
    if from_words[0] != "scratch":
        raise DockerfileError(
            f"{where}: the final stage must be FROM scratch (got {from_words[0]!r}): a base image's layers cannot be reproduced here"
        )

    spec = ImageSpec(dockerfile=path, files=[])
    # Stage scope: ARGs must be redeclared to be visible (Docker's rule), ENV adds to it.
    scope: dict[str, str | None] = {}
    env: dict[str, str] = {"PATH": DEFAULT_PATH_ENV.split("=", 1)[1]}
    for ins in final[1:]:
        where = f"{path}:{ins.line}"
        kw = ins.keyword
        if kw == "ARG":
            declare_args(ins, scope, build_args, global_scope, used, where)
        elif kw == "ENV":
            for k, v in key_values(ins, scope, where):
                env[k] = v
                scope[k] = v
        elif kw == "LABEL":
            for k, v in key_values(ins, scope, where):
                spec.labels[k] = v
        elif kw == "USER":
            w = words(ins.args, scope, where)
            if len(w) != 1 or not re.fullmatch(r"[^:\s]+(:[^:\s]+)?", w[0]):
                raise DockerfileError(f"{where}: USER wants user[:group], got {ins.args!r}")
            spec.user = w[0]
        elif kw == "ENTRYPOINT":
            spec.entrypoint = exec_form(ins, where)
        elif kw == "CMD":
            spec.cmd = exec_form(ins, where)
        elif kw == "EXPOSE":
            for w in words(ins.args, scope, where):
                m = re.fullmatch(r"(\d{1,5})(?:/(tcp|udp|sctp))?", w.lower())
                if not m:
                    raise DockerfileError(f"{where}: EXPOSE wants port[/proto], got {w!r}")
                spec.exposed_ports[f"{int(m.group(1))}/{m.group(2) or 'tcp'}"] = {}
        elif kw == "STOPSIGNAL":
            w = words(ins.args, scope, where)
            if len(w) != 1:
                raise DockerfileError(f"{where}: STOPSIGNAL wants one signal")
            spec.stop_signal = w[0]
        elif kw in ("COPY", "ADD"):
            spec.files.extend(copy_entries(ins, scope, stage_names, where))
        elif kw == "FROM":
            raise AssertionError("unreachable: FROM starts a stage")
        else:
            why = KNOWN_UNSUPPORTED.get(kw, "this builder does not know it")
            raise DockerfileError(
                f"{where}: {kw} in the final stage is not supported ({why}); support it in scripts/oci_image.py or keep it out of the final stage"
            )
    unused = sorted(set(build_args) - used)
    if unused:
        raise DockerfileError(
            f"{path}: --build-arg {', '.join(unused)} not declared by any ARG in scope"
        )
    spec.env = [f"{k}={v}" for k, v in env.items()]
    return spec


def copy_entries(
    ins: Instruction, scope: dict[str, str | None], stage_names: set[str], where: str
) -> list[FileEntry]:
    rest = ins.args
    flags: dict[str, str] = {}
    while True:
        m = re.match(r"^--([a-z-]+)(?:=(\S*))?\s+", rest)
        if not m:
            break
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
        rest = rest[m.end() :]
    allowed = (
        {"from", "chown", "chmod", "link"} if ins.keyword == "COPY" else {"chown", "chmod", "link"}
    )
    bad = sorted(set(flags) - allowed)
    if bad:
        raise DockerfileError(f"{where}: {ins.keyword} --{', --'.join(bad)} is not supported")
    if flags.get("link", "true") not in ("true", "false"):
        raise DockerfileError(f"{where}: --link takes true or false")
    stage = None
    if "from" in flags:
        stage = _substitute(flags["from"], scope, where)
        if stage.lower() not in stage_names:
            # --from=<image> would copy from an image's filesystem; only earlier stages (whose
            # outputs are built on the host) are supported.
            raise DockerfileError(f"{where}: COPY --from={stage} does not name an earlier stage")
    uid = gid = 0
    if "chown" in flags:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", _substitute(flags["chown"], scope, where))
        if not m:
            raise DockerfileError(
                f"{where}: --chown needs numeric uid[:gid] (scratch has no /etc/passwd)"
            )
        uid = int(m.group(1))
        gid = int(m.group(2)) if m.group(2) is not None else uid
    mode = None
    if "chmod" in flags:
        value = _substitute(flags["chmod"], scope, where)
        if not re.fullmatch(r"[0-7]{3,4}", value):
            raise DockerfileError(f"{where}: --chmod needs an octal mode, got {value!r}")
        mode = int(value, 8)
    if rest.startswith("["):
        try:
            parts = json.loads(rest)
        except json.JSONDecodeError as e:
            raise DockerfileError(f"{where}: bad JSON form: {e}") from None
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise DockerfileError(f"{where}: bad JSON form")
        parts = [_substitute(p, scope, where) for p in parts]
    else:
        parts = words(rest, scope, where)
    if len(parts) < 2:
        raise DockerfileError(f"{where}: {ins.keyword} needs a source and a destination")
    sources, dest = parts[:-1], parts[-1]
    if len(sources) > 1 and not dest.endswith("/"):
        raise DockerfileError(f"{where}: with several sources the destination must end with /")
    entries = []
    for src in sources:
        if re.search(r"[*?\[]", src):
            raise DockerfileError(f"{where}: wildcards are not supported ({src!r})")
        if ins.keyword == "ADD" and re.match(r"^[a-z][a-z0-9+.-]*://|^git@", src, re.IGNORECASE):
            raise DockerfileError(f"{where}: ADD of a URL or git repository is not supported")
        if src.endswith("/"):
            raise DockerfileError(f"{where}: directory sources are not supported ({src!r})")
        base = posixpath.basename(src.rstrip("/"))
        target = dest + base if dest.endswith("/") else dest
        # WORKDIR is unsupported, so relative destinations are relative to /.
        target = posixpath.normpath(posixpath.join("/", target))
        if target == "/":
            raise DockerfileError(f"{where}: cannot copy a file onto /")
        entries.append(
            FileEntry(
                dest=target,
                source=normalise_source(src, stage),
                stage=stage,
                uid=uid,
                gid=gid,
                mode=mode,
                instruction=ins.keyword,
            )
        )
    return entries


def normalise_source(src: str, stage: str | None) -> str:
    """The key a --context-file names a source by: absolute for a stage's files, relative to
    the context root for build-context files (however the Dockerfile spells either)."""
    if stage is not None:
        return posixpath.normpath(posixpath.join("/", src))
    return posixpath.normpath(src.lstrip("/") or ".")


def cargo_target(path: str) -> tuple[str, str]:
    """The -p/--bin of the one `cargo build` in the Dockerfile's build stages."""
    with open(path, encoding="utf-8") as f:
        instructions = logical_lines(f.read(), path)
    found = []
    for ins in instructions:
        for m in re.finditer(r"cargo\s+build\s+([^;&|]*)", ins.args):
            args = m.group(1).split()
            pkg = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-p", "--package")]
            bins = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--bin"]
            found.append((pkg, bins))
    if len(found) != 1 or len(found[0][0]) != 1 or len(found[0][1]) != 1:
        raise DockerfileError(
            f"{path}: expected exactly one `cargo build -p <package> --bin <bin>`, found {found}"
        )
    return found[0][0][0], found[0][1][0]


# --- the archive ---------------------------------------------------------------------------------


def image_config_body(spec: ImageSpec) -> dict[str, Any]:
    # WorkingDir "/" and the PATH in Env are what BuildKit starts a scratch stage with.
    body: dict[str, Any] = {"Env": spec.env, "WorkingDir": "/"}
    if spec.user is not None:
        body["User"] = spec.user
    if spec.entrypoint is not None:
        body["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        body["Cmd"] = spec.cmd
    if spec.labels:
        body["Labels"] = spec.labels
    if spec.exposed_ports:
        body["ExposedPorts"] = spec.exposed_ports
    if spec.stop_signal is not None:
        body["StopSignal"] = spec.stop_signal
    return body


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _tarinfo(
    name: str,
    size: int,
    mode: int,
    mtime: int,
    uid: int = 0,
    gid: int = 0,
    kind: bytes = tarfile.REGTYPE,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.type = kind
    return info


def is_archive(path: str) -> bool:
    """Would ADD unpack this local file instead of copying it?"""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def layer_tar(spec: ImageSpec, context_files: dict[str, str], mtime: int) -> bytes:
    unused = set(context_files)
    files: dict[str, tuple[FileEntry, str]] = {}
    for entry in spec.files:
        host = context_files.get(entry.source)
        if host is None:
            where = f"--from={entry.stage} " if entry.stage else ""
            raise DockerfileError(
                f"{spec.dockerfile}: {entry.instruction} {where}{entry.source}: no --context-file {entry.source}=<path> given"
            )
        unused.discard(entry.source)
        if not os.path.isfile(host):
            raise DockerfileError(f"--context-file {entry.source}={host}: not a regular file")
        if entry.instruction == "ADD" and is_archive(host):
            raise DockerfileError(
                f"{spec.dockerfile}: ADD {entry.source}: the file is an archive, which ADD would unpack; not supported"
            )
        files[entry.dest] = (entry, host)  # a later COPY to the same path wins, as in Docker
    if unused:
        raise DockerfileError(
            f"{spec.dockerfile}: --context-file {', '.join(sorted(unused))} not used by the final stage"
        )
    dirs = set()
    for dest in files:
        parent = posixpath.dirname(dest)
        while parent != "/":
            if parent in files:
                raise DockerfileError(f"{spec.dockerfile}: {parent} is both a file and a directory")
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(dirs | set(files)):
            name = path.lstrip("/")
            if path in dirs:
                # Parent directories COPY creates are root-owned 0755.
                tar.addfile(_tarinfo(name, 0, 0o755, mtime, kind=tarfile.DIRTYPE))
                continue
            entry, host = files[path]
            mode = entry.mode
            if mode is None:
                mode = 0o755 if os.stat(host).st_mode & 0o111 else 0o644
            with open(host, "rb") as f:
                data = f.read()
            tar.addfile(
                _tarinfo(name, len(data), mode, mtime, entry.uid, entry.gid), io.BytesIO(data)
            )
    return buf.getvalue()


REF_RE = re.compile(
    r"^(?P<domain>(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+)(?::\d+)?)/(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*):(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$"
)


def check_ref(ref: str) -> None:
    # Fully qualified (registry/name:tag) so every importer records exactly this name; a short
    # name would be normalised (or prefixed with import-<date> by ctr) differently per tool.
    if not REF_RE.match(ref):
        raise DockerfileError(
            f"image reference {ref!r} must be fully qualified: registry/name:tag (e.g. docker.io/civic-mcp/x:e2e)"
        )


def build_archive(
    spec: ImageSpec,
    ref: str,
    context_files: dict[str, str],
    mtime: int = 0,
    architecture: str = "amd64",
) -> bytes:
    check_ref(ref)
    layer = layer_tar(spec, context_files, mtime)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    created = _rfc3339(mtime)
    config = canonical_json(
        {
            "architecture": architecture,
            "os": "linux",
            "created": created,
            "config": image_config_body(spec),
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
        }
    )
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": architecture, "os": "linux"},
                    # containerd names the image after io.containerd.image.name; the OCI ref
                    # name carries the same full reference so no importer falls back to a
                    # generated name.
                    "annotations": {ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF: ref},
                }
            ],
        }
    )
    docker_manifest = canonical_json(
        [
            {
                "Config": _blob_path(config_digest),
                "RepoTags": [ref],
                "Layers": [_blob_path(layer_digest)],
            }
        ]
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            tar.addfile(_tarinfo(name, len(data), 0o644, mtime), io.BytesIO(data))

        add("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        tar.addfile(_tarinfo("blobs", 0, 0o755, mtime, kind=tarfile.DIRTYPE))
        tar.addfile(_tarinfo("blobs/sha256", 0, 0o755, mtime, kind=tarfile.DIRTYPE))
        for digest, data in sorted(
            [(layer_digest, layer), (config_digest, config), (manifest_digest, manifest)]
        ):
            add(_blob_path(digest), data)
        add("index.json", index)
        add("manifest.json", docker_manifest)
    return buf.getvalue()


def _blob_path(digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return f"blobs/{algo}/{hexd}"


def _rfc3339(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def inspect_archive(path: str) -> dict[str, Any]:
    """Reads an archive back, checks every digest and cross-reference, returns its contents."""
    members: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:") as tar:
        for m in tar.getmembers():
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                members[m.name] = f.read()

    def blob(desc: dict[str, Any], media: str) -> bytes:
        if desc.get("mediaType") != media:
            raise ValueError(f"descriptor {desc} is not {media}")
        data = members.get(_blob_path(desc["digest"]))
        if data is None:
            raise ValueError(f"blob {desc['digest']} missing")
        if (
            len(data) != desc["size"]
            or "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]
        ):
            raise ValueError(f"blob {desc['digest']} does not match its descriptor")
        return data

    for name, data in members.items():
        if (
            name.startswith("blobs/sha256/")
            and name.split("/")[-1] != hashlib.sha256(data).hexdigest()
        ):
            raise ValueError(f"{name}: content does not match its name")
    if json.loads(members["oci-layout"]) != {"imageLayoutVersion": "1.0.0"}:
        raise ValueError("bad oci-layout")
    index = json.loads(members["index.json"])
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        raise ValueError("index.json must hold one manifest")
    desc = index["manifests"][0]
    manifest = json.loads(blob(desc, MEDIA_MANIFEST))
    config = json.loads(blob(manifest["config"], MEDIA_CONFIG))
    layers = []
    for ldesc in manifest["layers"]:
        data = blob(ldesc, MEDIA_LAYER)
        entries = []
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as lt:
            for m in lt.getmembers():
                f = lt.extractfile(m) if m.isfile() else None
                content = f.read() if f else b""
                entries.append(
                    {
                        "path": m.name,
                        "type": "dir" if m.isdir() else "file" if m.isfile() else "other",
                        "uid": m.uid,
                        "gid": m.gid,
                        "mode": f"{m.mode:04o}",
                        "mtime": m.mtime,
                        "size": m.size,
                        "sha256": hashlib.sha256(content).hexdigest() if m.isfile() else None,
                    }
                )
        layers.append({"digest": ldesc["digest"], "size": ldesc["size"], "entries": entries})
    if config["rootfs"]["diff_ids"] != [d["digest"] for d in manifest["layers"]]:
        raise ValueError("rootfs.diff_ids do not match the (uncompressed) layers")
    docker = json.loads(members["manifest.json"])
    if docker != [
        {
            "Config": _blob_path(manifest["config"]["digest"]),
            "RepoTags": docker[0].get("RepoTags"),
            "Layers": [_blob_path(d["digest"]) for d in manifest["layers"]],
        }
    ]:
        raise ValueError("manifest.json does not match the OCI manifest")
    annotations = desc.get("annotations", {})
    return {
        "ref": annotations.get(ANNOTATION_CONTAINERD_NAME),
        "oci_ref_name": annotations.get(ANNOTATION_REF),
        "repo_tags": docker[0]["RepoTags"],
        "manifest_digest": desc["digest"],
        "platform": desc.get("platform"),
        "os": config["os"],
        "architecture": config["architecture"],
        "config": config["config"],
        "layers": layers,
    }


# --- CLI -----------------------------------------------------------------------------------------


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, eq, value = v.partition("=")
        if not eq or not key:
            raise DockerfileError(f"{flag} wants KEY=VALUE, got {v!r}")
        if key in out:
            raise DockerfileError(f"{flag} {key} given twice")
        out[key] = value
    return out


def _same_content(path: str, data: bytes) -> bool:
    if os.path.getsize(path) != len(data):
        return False
    with open(path, "rb") as f:
        return f.read() == data


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="oci_image.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write an image archive from a Dockerfile's final stage")
    s = sub.add_parser("spec", help="print the parsed final stage")
    for sp in (b, s):
        sp.add_argument("--from-dockerfile", required=True, metavar="PATH")
        sp.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument(
        "--context-file",
        action="append",
        default=[],
        metavar="SRC=PATH",
        help="the host file for a COPY/ADD source as the Dockerfile names it (e.g. /out/civic-sidecar=target/.../civic-sidecar)",
    )
    b.add_argument(
        "--ref",
        required=True,
        help="full image reference, e.g. docker.io/civic-mcp/civic-sidecar:e2e",
    )
    b.add_argument("--output", required=True, metavar="PATH")
    b.add_argument("--architecture", default="amd64")
    b.add_argument(
        "--source-date-epoch",
        type=int,
        default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
        help="timestamp of every entry (default $SOURCE_DATE_EPOCH or 0)",
    )
    c = sub.add_parser(
        "cargo-target", help="print '<package> <bin>' of the Dockerfile's cargo build"
    )
    c.add_argument("dockerfile")
    i = sub.add_parser("inspect", help="verify an archive and print it as JSON")
    i.add_argument("archive")
    args = p.parse_args(argv)
    try:
        if args.cmd == "cargo-target":
            print(*cargo_target(args.dockerfile))
        elif args.cmd == "inspect":
            print(json.dumps(inspect_archive(args.archive), indent=2, sort_keys=True))
        elif args.cmd == "spec":
            spec = parse_dockerfile(args.from_dockerfile, _pairs(args.build_arg, "--build-arg"))
            print(json.dumps(spec.as_json(), indent=2, sort_keys=True))
        else:
            spec = parse_dockerfile(args.from_dockerfile, _pairs(args.build_arg, "--build-arg"))
            context = {
                posixpath.normpath(k): v
                for k, v in _pairs(args.context_file, "--context-file").items()
            }
            data = build_archive(spec, args.ref, context, args.source_date_epoch, args.architecture)
            out_dir = os.path.dirname(os.path.abspath(args.output))
            os.makedirs(out_dir, exist_ok=True)
            if os.path.isfile(args.output) and _same_content(args.output, data):
                return 0  # unchanged: keep the file (and its mtime) as it is
            tmp = f"{args.output}.tmp.{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, args.output)  # never leave a half-written archive under the real name
    except DockerfileError as e:
        print(f"oci_image.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
