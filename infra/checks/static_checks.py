#!/usr/bin/env python3
"""Static checks of the deployment files that need no Docker engine and no AWS
account. Run by scripts/check-infra.sh; each check prints one line:

    PASS <name>[: detail]
    FAIL <name>: <what is wrong>
    SKIP <name>: <why>

and the exit status is 1 when any check failed.

    static_checks.py dockerfile   REPO            (plain python3 >= 3.11)
    static_checks.py templates    REPO            (needs cfn-lint's YAML loader)
    static_checks.py skips        REPO CHECKOV_JSON
    static_checks.py invoke       REPO [TEMPLATE...]   (needs aws-sam-cli's venv)
    static_checks.py invoke-selftest REPO             (the invoke check refuses bad templates)
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shlex
import sys

RESULTS: list[tuple[str, str, str]] = []


def record(status: str, name: str, detail: str = "") -> None:
    RESULTS.append((status, name, detail))
    print(f"{status} {name}" + (f": {detail}" if detail else ""), flush=True)


def check(name: str, ok: bool, detail_ok: str = "", detail_fail: str = "") -> None:
    record("PASS" if ok else "FAIL", name, detail_ok if ok else detail_fail)


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------

def dockerfile_instructions(path: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuations joined and
    comments dropped. Heredocs are not used by infra/Dockerfile (the classic
    builder cannot parse them) and are reported as a failure."""
    out: list[tuple[int, str, str]] = []
    buf, start = "", 0
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue  # comment inside a continued instruction
            if not buf:
                start = n
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            parts = buf.strip().split(None, 1)
            out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
            buf = ""
    return out


def split_flags(args: str) -> tuple[dict[str, str], list[str]]:
    args = args.strip()
    if args.startswith("["):
        words = json.loads(args)
    else:
        words = shlex.split(args)
    flags: dict[str, str] = {}
    rest: list[str] = []
    for w in words:
        if not rest and w.startswith("--"):
            k, _, v = w[2:].partition("=")
            flags[k] = v
        else:
            rest.append(w)
    return flags, rest


def dockerignore_included(patterns: list[tuple[bool, str]], rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; `**` spans directories."""
    included = True
    for negate, pat in patterns:
        rx = "^" + re.escape(pat).replace(r"\*\*", "\x00").replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace("\x00", ".*") + "(/.*)?$"
        if re.match(rx, rel):
            included = negate
    return included


def load_dockerignore(path: str) -> list[tuple[bool, str]]:
    pats = []
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pats.append((neg, os.path.normpath(line.lstrip("!").lstrip("/"))))
    return pats


ORT_SHA_RX = re.compile(r"SHA256_(x86_64|aarch64|X86_64|AARCH64)=\"?([0-9a-f]{64})")


def ort_pins(path: str) -> dict[str, str]:
    pins = {}
    if os.path.exists(path):
        for m in ORT_SHA_RX.finditer(open(path, encoding="utf-8").read()):
            pins[m.group(1).lower()] = m.group(2)
    return pins


def cargo_needed_paths(repo: str) -> tuple[list[str], list[str]]:
    """Paths (relative to repo) that `cargo build --release --bin model-router`
    needs to see, given Cargo.toml as it stands, and problems found."""
    import tomllib

    problems: list[str] = []
    with open(os.path.join(repo, "Cargo.toml"), "rb") as f:
        manifest = tomllib.load(f)
    need = ["Cargo.lock"] + package_needed_paths(repo, ".", manifest)
    # Cargo reads every workspace member's manifest (and so its targets),
    # whichever package is built.
    for member in manifest.get("workspace", {}).get("members", []):
        member = os.path.normpath(member)
        if member == ".":
            continue
        if any(c in member for c in "*?["):
            problems.append(f"workspace member glob {member!r}: list members explicitly")
            continue
        with open(os.path.join(repo, member, "Cargo.toml"), "rb") as f:
            need += package_needed_paths(repo, member, tomllib.load(f))
    return need, problems


def package_needed_paths(repo: str, member: str, manifest: dict) -> list[str]:
    """The paths (relative to repo) that cargo needs for one package of the
    workspace, `member` being its directory ("." for the root package)."""
    need = [os.path.normpath(os.path.join(member, "Cargo.toml"))]
    at = lambda p: os.path.normpath(os.path.join(member, p))  # noqa: E731
    pkg = manifest.get("package", {})
    build = pkg.get("build")
    if isinstance(build, str):
        need.append(at(build))
    elif build is None and os.path.exists(os.path.join(repo, member, "build.rs")):
        need.append(at("build.rs"))
    lib = manifest.get("lib")
    if lib is not None:
        need.append(at(lib.get("path", "src/lib.rs")))
    defaults = {"bin": "src/bin/{}.rs", "bench": "benches/{}.rs", "test": "tests/{}.rs", "example": "examples/{}.rs"}
    for kind, pattern in defaults.items():
        for t in manifest.get(kind, []):
            if "path" in t:
                need.append(at(t["path"]))
            elif kind == "bin" and t.get("name") == pkg.get("name"):
                need.append(at("src/main.rs"))
            else:
                need.append(at(pattern.format(t.get("name", "?"))))
    # include_str!/include_bytes! reach files next to the source at build time.
    for rs in glob.glob(os.path.join(repo, member, "src", "**", "*.rs"), recursive=True):
        text = open(rs, encoding="utf-8", errors="replace").read()
        for m in re.finditer(r"include_(?:str|bytes)!\s*\(\s*\"([^\"]+)\"", text):
            target = os.path.normpath(os.path.join(os.path.dirname(rs), m.group(1)))
            need.append(os.path.relpath(target, repo))
    return need


def cmd_dockerfile(repo: str) -> None:
    path = os.path.join(repo, "infra", "Dockerfile")
    ins = dockerfile_instructions(path)
    text = open(path, encoding="utf-8").read()
    check("dockerfile: no heredoc (classic builder compatible)", "<<" not in "".join(a for _, i, a in ins if i == "RUN"),
          detail_fail="RUN uses a heredoc, which only BuildKit parses")

    stages: list[str] = []
    unpinned, pinned = [], []
    copies: list[tuple[int, str, dict, list]] = []
    current_stage = ""
    for n, inst, args in ins:
        if inst == "FROM":
            flags, words = split_flags(args)
            image = words[0]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else ""
            if image in stages:
                pinned.append(f"{image} (stage)")
            elif "$" in image:
                unpinned.append(f"line {n}: {image} (variable: cannot be checked statically)")
            elif "@sha256:" in image:
                pinned.append(f"{image} (digest)")
            else:
                last = image.rsplit("/", 1)[-1]
                tag = last.split(":", 1)[1] if ":" in last else ""
                if not tag or tag == "latest":
                    unpinned.append(f"line {n}: {image} (no tag or latest)")
                elif not re.search(r"\d+\.\d+", tag):
                    unpinned.append(f"line {n}: {image} (tag '{tag}' is a moving tag, no version in it)")
                else:
                    pinned.append(f"{image} (tag)")
            stages.append(name)
            current_stage = name
        elif inst in ("COPY", "ADD"):
            flags, words = split_flags(args)
            copies.append((n, current_stage, flags, words))
            if inst == "ADD":
                unpinned.append(f"line {n}: ADD (use COPY)")
    check("dockerfile: base images pinned by version tag or digest", not unpinned,
          detail_ok="; ".join(p for p in pinned if "(stage)" not in p),
          detail_fail="; ".join(unpinned))

    # COPY --from names an earlier stage; other COPY sources exist in the
    # context (the repository root) and survive the .dockerignore files.
    ignore_pats = load_dockerignore(os.path.join(repo, "infra", "Dockerfile.dockerignore"))
    root_ignore = load_dockerignore(os.path.join(repo, ".dockerignore"))
    bad, ok_sources = [], []
    copied_into_build: list[str] = []
    for n, stage, flags, words in copies:
        srcs = words[:-1]
        if "from" in flags:
            if flags["from"] not in stages[: stages.index(stage)] if stage in stages else flags["from"] not in stages:
                bad.append(f"line {n}: COPY --from={flags['from']} names no earlier stage")
            continue
        for s in srcs:
            rel = os.path.normpath(s)
            matches = glob.glob(os.path.join(repo, rel))
            if not matches:
                bad.append(f"line {n}: {s} does not exist in the build context (repository root)")
                continue
            for m in matches:
                files = [m] if os.path.isfile(m) else [p for p in glob.glob(os.path.join(m, "**"), recursive=True) if os.path.isfile(p)]
                for fpath in files:
                    r = os.path.relpath(fpath, repo)
                    if not dockerignore_included(ignore_pats, r):
                        bad.append(f"line {n}: {r} is excluded by infra/Dockerfile.dockerignore")
                    if root_ignore and not dockerignore_included(root_ignore, r):
                        bad.append(f"line {n}: {r} is excluded by .dockerignore")
            ok_sources.append(s)
            copied_into_build.append(rel)
    check("dockerfile: COPY sources exist in the context or come from a build stage", not bad,
          detail_ok=", ".join(ok_sources) + " + --from stages", detail_fail="; ".join(bad[:10]))

    # What cargo needs for the manifest as it stands is inside what is copied.
    need, problems = cargo_needed_paths(repo)
    missing = [p for p in need if not any(p == c or p.startswith(c.rstrip("/") + "/") for c in copied_into_build)]
    check("dockerfile: copied sources cover what Cargo.toml needs (targets, build.rs, include_str!)",
          not missing and not problems,
          detail_ok=f"{len(need)} paths",
          detail_fail="; ".join(problems + [f"{p} is needed but not copied: add a COPY to infra/Dockerfile" for p in missing]))

    # The ONNX Runtime pins agree with the project's own set-up.
    mine = {k.lower(): v for k, v in re.findall(r"ARG ORT_SHA256_(X86_64|AARCH64)=([0-9a-f]{64})", text)}
    pins = ort_pins(os.path.join(repo, "scripts", "ort-pins.sh"))
    problems = []
    if set(mine) != {"x86_64", "aarch64"}:
        problems.append("infra/Dockerfile lacks ORT_SHA256_X86_64/AARCH64")
    for label in ("scripts/setup-ort.sh", "scripts/build-ort-layer.sh"):
        if "ort-pins.sh" not in open(os.path.join(repo, label), encoding="utf-8").read():
            problems.append(f"{label} does not source scripts/ort-pins.sh")
    for label, other in (("scripts/ort-pins.sh", pins),):
        if not other:
            problems.append(f"{label}: no pinned sha256 found")
        for k, v in other.items():
            if mine.get(k) != v:
                problems.append(f"{label} pins {k} {v}, infra/Dockerfile {mine.get(k)}")
    versions = set(re.findall(r"ORT_VERSION=\"?([0-9.]+)", text))
    for label in ("scripts/ort-pins.sh",):
        p = os.path.join(repo, label)
        if os.path.exists(p):
            versions |= set(re.findall(r"ORT_VERSION=\"?([0-9.]+)", open(p, encoding="utf-8").read()))
    if len(versions) != 1:
        problems.append(f"ONNX Runtime versions disagree: {sorted(versions)}")
    check("dockerfile: onnxruntime wheel version and sha256 match scripts/ort-pins.sh", not problems,
          detail_ok=f"onnxruntime=={next(iter(versions))}, x86_64 {mine.get('x86_64', '')[:12]}..., aarch64 {mine.get('aarch64', '')[:12]}...",
          detail_fail="; ".join(problems))

    # The final stage is the Lambda base image and starts the binary in exec form.
    final = [(n, i, a) for n, i, a in ins]
    last_from = max(k for k, (_, i, _) in enumerate(final) if i == "FROM")
    tail = final[last_from:]
    base = tail[0][2].split()[0]
    entry = [a for _, i, a in tail if i == "ENTRYPOINT"]
    cmd = [a for _, i, a in tail if i == "CMD"]
    problems = []
    if not base.startswith("public.ecr.aws/lambda/provided:al2023"):
        problems.append(f"final base is {base}, expected public.ecr.aws/lambda/provided:al2023.*")
    if not entry or not entry[-1].strip().startswith("["):
        problems.append("ENTRYPOINT missing or not in exec form")
    elif json.loads(entry[-1])[0] != "/var/task/model-router":
        problems.append(f"ENTRYPOINT is {entry[-1]}, expected the binary /var/task/model-router")
    if not cmd or json.loads(cmd[-1]) != ["lambda"]:
        problems.append('CMD should be ["lambda"]')
    if not any(i == "COPY" and "--from=ort" in a and "/var/task" in a for _, i, a in tail):
        problems.append("libonnxruntime is not copied next to the binary in /var/task")
    # skl2onnx's default text models need en_US.UTF-8; provided:al2023 has only C locales.
    if not any(i == "RUN" and re.search(r"\b(micro)?dnf install\b.*\bglibc-(langpack-en|all-langpacks)\b", a)
               for _, i, a in tail):
        problems.append("the runtime stage does not install en_US.UTF-8 (glibc-langpack-en)")
    check("dockerfile: runtime stage is provided:al2023 with the binary as exec-form entry point", not problems,
          detail_ok=f'{base}, ENTRYPOINT {entry[-1] if entry else ""} CMD {cmd[-1] if cmd else ""}',
          detail_fail="; ".join(problems))


# --------------------------------------------------------------------------
# Templates (the contract of DESIGN.md as the infrastructure sees it)
# --------------------------------------------------------------------------

DESIGN_ROUTES = {
    ("POST", "/models/{name}/{version}/predict"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", "/v2/models/{name}/infer"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/models"),
}
DESIGN_ENV = {
    "MODEL_ROOT", "MODEL_CACHE_BYTES", "MODEL_STAGING_DIR", "MODEL_STAGING_BYTES", "PRELOAD_MODELS",
    "ORT_DYLIB_PATH", "ORT_INTRA_THREADS", "ACCESS_POLICY", "LOG_FORMAT", "RUST_LOG", "METRICS_NAMESPACE",
    # the binary's own further settings (src/config.rs)
    "METRICS", "MAX_REQUEST_BYTES", "POLICY_RELOAD_SECONDS",
}
PUBLISHER_ENV = DESIGN_ENV | {"PUBLISH_INCOMING_PREFIX", "PUBLISH_RESULTS_PREFIX"}


def readme_routes(repo: str) -> set[tuple[str, str]]:
    """The server's routes, from the README's "Requests" table (the reference
    users read; tests/routes.rs sends each one to the real server). A
    `[/versions/{version}]` part is optional: both forms are routes."""
    text = open(os.path.join(repo, "README.md"), encoding="utf-8").read()
    section = text.split("\n## Requests", 1)[1].split("\n## ", 1)[0]
    routes = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for method, path in re.findall(r"`(GET|POST|PUT|DELETE|HEAD) (/[^`]*)`", first_cell):
            for optional in re.findall(r"\[[^\]]*\]", path) or [""]:
                routes.add((method, path.replace(optional, "") if optional else path))
                if optional:
                    routes.add((method, path.replace(optional, optional[1:-1])))
    if not routes:
        raise SystemExit("no routes found in README.md's Requests table")
    return routes


def load_cfn(path: str) -> dict:
    from cfnlint.decode import decode

    tpl, matches = decode(path)
    if matches or tpl is None:
        raise SystemExit(f"cannot parse {path}: {matches}")
    return tpl


def statements(props: dict) -> list[dict]:
    out = []
    for p in props.get("Policies", []) or []:
        if isinstance(p, dict) and "Statement" in p:
            out.extend(p["Statement"])
    return out


def actions(st: dict) -> set[str]:
    a = st.get("Action", [])
    return {a} if isinstance(a, str) else set(a)


def env_keys(props: dict) -> set[str]:
    return set(((props.get("Environment") or {}).get("Variables") or {}).keys())


def cmd_templates(repo: str) -> None:
    infra = os.path.join(repo, "infra")
    dockerfile_text = open(os.path.join(infra, "Dockerfile"), encoding="utf-8").read()
    ort_version = re.search(r"ARG ORT_VERSION=([0-9.]+)", dockerfile_text).group(1)

    tpl = load_cfn(os.path.join(infra, "template.yaml"))
    res = tpl["Resources"]
    router, publisher = res["RouterFunction"], res["PublisherFunction"]
    rp, pp = router["Properties"], publisher["Properties"]

    problems = []
    for name, r in (("RouterFunction", router), ("PublisherFunction", publisher)):
        md = r.get("Metadata", {})
        df = os.path.normpath(os.path.join(infra, md.get("DockerContext", "."), md.get("Dockerfile", "Dockerfile")))
        if not os.path.exists(df):
            problems.append(f"{name}: Metadata Dockerfile {df} does not exist")
        if r["Properties"].get("PackageType") != "Image":
            problems.append(f"{name}: PackageType is not Image")
    if rp.get("ImageConfig", {}).get("Command") != ["lambda"]:
        problems.append("RouterFunction ImageConfig Command is not [lambda]")
    # The publisher is its own image: the Dockerfile's `publisher` stage,
    # whose entry point is model-router-publisher.
    if pp.get("ImageConfig", {}).get("Command") != ["lambda"]:
        problems.append("PublisherFunction ImageConfig Command is not [lambda]")
    target = publisher.get("Metadata", {}).get("DockerBuildTarget")
    if target != "publisher":
        problems.append(f"PublisherFunction DockerBuildTarget is {target!r}, expected 'publisher'")
    elif not re.search(r"(?im)^FROM\s+\S+\s+AS\s+publisher\s*$", dockerfile_text):
        problems.append("infra/Dockerfile has no stage named publisher")
    if router.get("Metadata", {}).get("DockerBuildTarget") not in (None, "runtime"):
        problems.append("RouterFunction does not build the serving image (the last stage, runtime)")
    check("template: both functions build infra/Dockerfile; serving image runs lambda, publisher stage runs lambda", not problems,
          detail_fail="; ".join(problems))

    server_routes = readme_routes(repo)
    routes = set()
    for ev in rp.get("Events", {}).values():
        if ev.get("Type") == "HttpApi":
            routes.add((ev["Properties"]["Method"].upper(), ev["Properties"]["Path"]))
    jwt_routes = set()
    for r in res.values():
        if r["Type"] == "AWS::ApiGatewayV2::Route" and json.dumps(r["Properties"].get("ApiId")) == json.dumps({"Ref": "JwtHttpApi"}):
            method, _, path = r["Properties"]["RouteKey"].partition(" ")
            jwt_routes.add((method, path))
            if r["Properties"].get("AuthorizationType") != "JWT":
                jwt_routes.add(("NO-JWT-AUTH", path))
    api = res["HttpApi"]["Properties"]
    auth_ok = api.get("Auth", {}).get("EnableIamAuthorizer") is True and api["Auth"].get("DefaultAuthorizer") == "AWS_IAM"
    problems = []
    if DESIGN_ROUTES - server_routes:
        problems.append(f"README's route table lacks DESIGN section 3 routes {sorted(DESIGN_ROUTES - server_routes)}")
    for label, got in (("IAM HTTP API", routes), ("JWT HTTP API", jwt_routes)):
        if server_routes - got:
            problems.append(f"{label} lacks {sorted(server_routes - got)}")
        if got - server_routes:
            problems.append(f"{label} has routes the server does not: {sorted(got - server_routes)}")
    if not auth_ok:
        problems.append("the HTTP API's default authorizer is not AWS_IAM")
    check("template: both HTTP APIs (IAM; JWT when ApiAuthorizer=JWT) route every route of the server (README \"Requests\")",
          not problems, detail_ok=f"{len(server_routes)} routes each", detail_fail="; ".join(problems))

    problems = []
    for name, props, allowed in (("RouterFunction", rp, DESIGN_ENV), ("PublisherFunction", pp, PUBLISHER_ENV)):
        extra = env_keys(props) - allowed
        if extra:
            problems.append(f"{name}: variables outside DESIGN section 5: {sorted(extra)}")
        v = props["Environment"]["Variables"]
        if v.get("MODEL_ROOT") != "/mnt/models":
            problems.append(f"{name}: MODEL_ROOT is not /mnt/models")
        if v.get("ORT_DYLIB_PATH") != f"/var/task/libonnxruntime.so.{ort_version}":
            problems.append(f"{name}: ORT_DYLIB_PATH does not name libonnxruntime.so.{ort_version} in /var/task")
        mounts = [c.get("LocalMountPath") for c in props.get("FileSystemConfigs", [])]
        if mounts != ["/mnt/models"]:
            problems.append(f"{name}: FileSystemConfigs mount {mounts}, expected /mnt/models")
    check("template: environment is DESIGN section 5 (+ the binary's settings) and matches the image and the mount", not problems,
          detail_fail="; ".join(problems))

    problems = []
    for st in statements(rp):
        a = actions(st)
        if any(x.startswith("elasticfilesystem:Client") and x != "elasticfilesystem:ClientMount" for x in a) or "elasticfilesystem:*" in a:
            problems.append(f"serving role has {sorted(a)}")
        if any(x.startswith("s3:") for x in a):
            problems.append("serving role has S3 access")
    pub_write = [st for st in statements(pp) if "elasticfilesystem:ClientWrite" in actions(st)]
    if not pub_write:
        problems.append("publisher role has no ClientWrite")
    for st in pub_write:
        cond = json.dumps(st.get("Condition", {}))
        if "PublisherAccessPoint" not in cond:
            problems.append("publisher ClientWrite is not conditioned on PublisherAccessPoint")
    fs = res["ModelFileSystem"]["Properties"]
    for st in fs.get("FileSystemPolicy", {}).get("Statement", []):
        if st.get("Effect") == "Allow" and ("*" in json.dumps(st.get("Principal")) or "elasticfilesystem:ClientRootAccess" in actions(st)):
            problems.append("file system policy allows anonymous or root access")
    if rp["FileSystemConfigs"][0]["Arn"] == pp["FileSystemConfigs"][0]["Arn"]:
        problems.append("serving and publisher mount the same access point")
    check("template: EFS is read-only for the serving role, writable only by the publisher", not problems,
          detail_fail="; ".join(problems))

    problems = []
    if fs.get("Encrypted") is not True:
        problems.append("EFS not encrypted")
    if fs.get("ThroughputMode") != "elastic":
        problems.append("EFS ThroughputMode is not elastic")
    for ap in ("ServingAccessPoint", "PublisherAccessPoint"):
        p = res[ap]["Properties"]
        if p.get("RootDirectory", {}).get("Path") != "/models" or "PosixUser" not in p:
            problems.append(f"{ap}: needs RootDirectory /models and a PosixUser")
    mts = [r for r in res.values() if r["Type"] == "AWS::EFS::MountTarget"]
    if len(mts) < 2:
        problems.append("fewer than two mount targets")
    check("template: EFS encrypted, elastic, access points rooted at /models, mount targets", not problems,
          detail_fail="; ".join(problems))

    problems = []
    alarms = {r["Properties"].get("MetricName") for r in res.values() if r["Type"] == "AWS::CloudWatch::Alarm"}
    for m in ("Errors", "Throttles", "ChecksumFailures"):
        if m not in alarms:
            problems.append(f"no alarm on {m}")
    if "ProvisionedConcurrencyConfig" not in rp or not rp.get("AutoPublishAlias"):
        problems.append("no provisioned-concurrency alias")
    rule = res.get("WarmScheduleRule", {}).get("Properties", {})
    if '"action":"warm"' not in json.dumps(rule.get("Targets", [{}])[0].get("Input", "")).replace("\\", ""):
        problems.append("the schedule does not send the warm admin event")
    outs = tpl.get("Outputs", {})
    for o in ("ApiUrl", "FileSystemId"):
        if o not in outs:
            problems.append(f"no output {o}")
    check("template: alarms, provisioned-concurrency alias, warm schedule, outputs", not problems,
          detail_ok=f"alarms on {sorted(a for a in alarms if a)}", detail_fail="; ".join(problems))

    zp = load_cfn(os.path.join(infra, "template-zip.yaml"))["Resources"]["RouterZipFunction"]["Properties"]
    problems = []
    if zp.get("Runtime") != "provided.al2023" or zp.get("Handler") != "bootstrap":
        problems.append("zip function is not provided.al2023 / bootstrap")
    if zp["Environment"]["Variables"].get("ORT_DYLIB_PATH") != f"/opt/lib/libonnxruntime.so.{ort_version}":
        problems.append("zip function ORT_DYLIB_PATH is not the layer's /opt/lib path")
    layer_script = open(os.path.join(repo, "scripts", "build-ort-layer.sh"), encoding="utf-8").read()
    if "target/lambda" not in layer_script or "ort-layer" not in layer_script:
        problems.append("build-ort-layer.sh does not write target/lambda/ort-layer")
    # skl2onnx's default text models need en_US.UTF-8; provided.al2023 has only C locales.
    if zp["Environment"]["Variables"].get("LOCPATH") != "/opt/lib/locale":
        problems.append("zip function LOCPATH is not the layer's /opt/lib/locale")
    if 'setup-locale.sh" --dir "$layer_dir/lib/locale"' not in layer_script or "en_US.UTF-8" not in layer_script:
        problems.append("build-ort-layer.sh does not compile en_US.UTF-8 into lib/locale")
    check("template-zip: provided.al2023 bootstrap + ONNX Runtime layer at /opt/lib, locales at /opt/lib/locale",
          not problems, detail_fail="; ".join(problems))

    ecs = load_cfn(os.path.join(infra, "ecs-service.yaml"))["Resources"]
    td = ecs["TaskDefinition"]["Properties"]
    c = td["ContainerDefinitions"][0]
    problems = []
    if c.get("Command", [None])[0] != "serve" or "0.0.0.0:8080" not in c.get("Command", []):
        problems.append("container command is not `serve ... --addr 0.0.0.0:8080`")
    vols = {v["Name"]: v for v in td.get("Volumes", [])}
    efs = vols.get("models", {}).get("EFSVolumeConfiguration", {})
    if efs.get("TransitEncryption") != "ENABLED" or efs.get("AuthorizationConfig", {}).get("IAM") != "ENABLED":
        problems.append("EFS volume without TLS and IAM authorisation")
    mp = {m["ContainerPath"]: m for m in c.get("MountPoints", [])}
    if mp.get("/mnt/models", {}).get("ReadOnly") is not True:
        problems.append("/mnt/models is not mounted read-only")
    check("ecs-service: same image as `serve`, EFS read-only over TLS + IAM", not problems,
          detail_fail="; ".join(problems))


# --------------------------------------------------------------------------
# Who may invoke the serving function (the trust boundary, README "Teams")
# --------------------------------------------------------------------------
#
# Lambda cannot tell an HTTP API event from one a caller wrote, so whoever may
# invoke the serving function can claim any team's identity. After the SAM
# transform (run here offline with aws-sam-translator, as `sam deploy` would),
# the serving function's resource policy may hold only:
#   - apigateway.amazonaws.com, SourceArn within an AWS::ApiGatewayV2::Api of
#     this template (execute-api:<region>:<account>:<api id>/...)
#   - events.amazonaws.com, SourceArn the ARN of an AWS::Events::Rule of this
#     template that targets the alias
# both on the alias, with Action lambda:InvokeFunction exactly; no Function
# URL; and no IAM policy of the template may allow invoking it, except the
# unattached admin policy (RouterAdminInvokePolicy) that operators attach.
# Conditions are ignored: every permission a parameter can switch on counts.

SERVING_FUNCTION = "RouterFunction"  # template-zip.yaml: RouterZipFunction
SERVING_FUNCTIONS = (SERVING_FUNCTION, "RouterZipFunction")
ADMIN_POLICY = "RouterAdminInvokePolicy"
INVOKE_ACTIONS = re.compile(r"^(\*|lambda:\*|lambda:Invoke\*?|lambda:InvokeFunction(Url)?|lambda:InvokeAsync)$", re.I)


def sam_transform(tpl: dict) -> dict:
    """The CloudFormation template `sam deploy` would submit (offline)."""
    import copy
    import logging

    from samtranslator.translator.transform import transform

    # Its usage metrics complain on stderr that nobody publishes them.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)

    class NoManagedPolicies:
        def load(self) -> dict:
            return {}

    tpl = copy.deepcopy(tpl)
    for r in tpl.get("Resources", {}).values():
        props = r.get("Properties") or {}
        # `sam build` / `sam package` fill these in; any URI will do for the transform.
        if r.get("Type") == "AWS::Serverless::Function" and props.get("PackageType") == "Image":
            props.setdefault("ImageUri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/model-router:check")
        elif r.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = "s3://bucket/model-router.zip"
        elif r.get("Type") == "AWS::Serverless::LayerVersion" and isinstance(props.get("ContentUri"), str):
            props["ContentUri"] = "s3://bucket/ort-layer.zip"
    return transform(tpl, {}, NoManagedPolicies())


def refs(value) -> set[str]:
    """Logical ids that `value` references (Ref, GetAtt, ${X} in Sub)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v.split(".")[0])
            elif k == "Fn::GetAtt":
                name = v[0] if isinstance(v, list) else str(v).split(".")[0]
                out.add(name)
            elif k == "Fn::Sub":
                text = v[0] if isinstance(v, list) else v
                out |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text) if not m.startswith("AWS::")}
                if isinstance(v, list) and len(v) > 1:
                    for sub_value in v[1].values():
                        out |= refs(sub_value)
            else:
                out |= refs(v)
    elif isinstance(value, list):
        for v in value:
            out |= refs(v)
    return out


def invoke_problems(cfn: dict) -> list[str]:
    res = cfn.get("Resources", {})
    function = next((f for f in SERVING_FUNCTIONS if f in res), SERVING_FUNCTION)
    aliases = {k for k, r in res.items() if r["Type"] == "AWS::Lambda::Alias"
               and function in refs(r["Properties"].get("FunctionName"))}
    versions = {k for k, r in res.items() if r["Type"] == "AWS::Lambda::Version"
                and function in refs(r["Properties"].get("FunctionName"))}
    serving = {function} | aliases | versions
    apis = {k for k, r in res.items() if r["Type"] == "AWS::ApiGatewayV2::Api"}
    rules = {k for k, r in res.items() if r["Type"] == "AWS::Events::Rule"
             and any(refs(t.get("Arn")) & aliases for t in r["Properties"].get("Targets", []))}
    problems = []
    if not aliases:
        problems.append(f"{function} has no alias (AutoPublishAlias)")
    for name, r in res.items():
        props = r.get("Properties") or {}
        if r["Type"] == "AWS::Lambda::Url" and refs(props.get("TargetFunctionArn")) & serving:
            problems.append(f"{name}: a Function URL on the serving function")
        if r["Type"] == "AWS::Lambda::Permission":
            target = props.get("FunctionName")
            targets = refs(target)
            if not targets:
                problems.append(f"{name}: FunctionName {json.dumps(target)} is not a reference: cannot tell whether it is the serving function")
                continue
            if not targets & serving:
                continue
            principal, source = props.get("Principal"), props.get("SourceArn")
            why = []
            if not targets <= aliases:
                why.append("is not on the alias")
            if props.get("Action") != "lambda:InvokeFunction":
                why.append(f"grants {props.get('Action')!r}, not lambda:InvokeFunction")
            if any(k in props for k in ("FunctionUrlAuthType", "EventSourceToken", "PrincipalOrgID")):
                why.append("has FunctionUrlAuthType, EventSourceToken or PrincipalOrgID")
            if principal == "apigateway.amazonaws.com":
                text = json.dumps(source)
                if not (refs(source) & apis and "execute-api:${AWS::Region}:${AWS::AccountId}:" in text):
                    why.append("lets API Gateway invoke without a SourceArn within this template's HTTP API")
            elif principal == "events.amazonaws.com":
                if not (isinstance(source, dict) and "Fn::GetAtt" in source and refs(source) <= rules and refs(source)):
                    why.append("lets EventBridge invoke without the SourceArn of this template's warm rule")
            else:
                why.append(f"gives invoke rights to {json.dumps(principal)}")
            if why:
                problems.append(f"{name}: " + "; ".join(why))
        if r["Type"] in ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::User", "AWS::IAM::Group"):
            documents = [props.get("PolicyDocument")] + [p.get("PolicyDocument") for p in props.get("Policies", []) or []]
            for doc in filter(None, documents):
                for st in doc.get("Statement", []):
                    if st.get("Effect") != "Allow" or not any(INVOKE_ACTIONS.match(a) for a in actions(st)):
                        continue
                    resources = st.get("Resource", [])
                    resources = resources if isinstance(resources, list) else [resources]
                    if not any(x == "*" or refs(x) & serving or (isinstance(x, str) and ":function:" in x) for x in resources):
                        continue
                    attached = [k for k in ("Roles", "Users", "Groups") if props.get(k)]
                    if name == ADMIN_POLICY and r["Type"] == "AWS::IAM::ManagedPolicy" and not attached:
                        continue
                    problems.append(f"{name}: an IAM policy that lets {'its ' + '/'.join(attached) if attached else 'its holder'} invoke the serving function")
    return problems


def cmd_invoke(repo: str, path: str) -> None:
    label = os.path.relpath(path, repo)
    problems = invoke_problems(sam_transform(load_sam(path)))
    check(f"invoke policy of {label}: only the HTTP API (by source ARN) and the warm schedule may invoke the serving alias",
          not problems, detail_ok="no other principal, no Function URL, admin policy unattached",
          detail_fail="; ".join(problems))


def load_sam(path: str) -> dict:
    from samcli.yamlhelper import yaml_parse

    return yaml_parse(open(path, encoding="utf-8").read())


def bad_variants(tpl: dict) -> list[tuple[str, dict]]:
    """Templates that must fail the invoke check, each one change away from `tpl`."""
    import copy

    def variant(change):
        t = copy.deepcopy(tpl)
        change(t["Resources"])
        return t

    def permission(**props):
        base = {"Action": "lambda:InvokeFunction", "FunctionName": {"Ref": f"{SERVING_FUNCTION}.Alias"}}
        return {"Type": "AWS::Lambda::Permission", "Properties": base | props}

    def add(name, resource):
        return lambda res: res.__setitem__(name, resource)

    def set_props(name, **props):
        return lambda res: res[name]["Properties"].update(props)

    return [
        ("anyone may invoke (Principal *)", variant(add("Everyone", permission(Principal="*")))),
        ("another account may invoke", variant(add("OtherAccount", permission(Principal="arn:aws:iam::999999999999:root")))),
        ("this account's root (every IAM principal it allows) may invoke",
         variant(add("ThisAccount", permission(Principal={"Ref": "AWS::AccountId"})))),
        ("API Gateway without a source ARN (any API, any account)",
         variant(add("AnyApi", permission(Principal="apigateway.amazonaws.com")))),
        ("EventBridge from a rule elsewhere", variant(add("OtherRule", permission(
            Principal="events.amazonaws.com", SourceArn="arn:aws:events:us-east-1:999999999999:rule/x")))),
        ("the HTTP API on the unqualified function", variant(add("Unqualified", permission(
            Principal="apigateway.amazonaws.com", FunctionName={"Ref": SERVING_FUNCTION},
            SourceArn={"Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${HttpApi}/*"})))),
        ("lambda:* instead of lambda:InvokeFunction", variant(add("Wildcard", permission(
            Action="lambda:*", Principal="events.amazonaws.com", SourceArn={"Fn::GetAtt": ["WarmScheduleRule", "Arn"]})))),
        ("a public Function URL", variant(set_props(SERVING_FUNCTION, FunctionUrlConfig={"AuthType": "NONE"}))),
        ("the publisher's role may invoke the router", variant(lambda res: res["PublisherFunction"]["Properties"]["Policies"].append(
            {"Statement": [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": {"Ref": f"{SERVING_FUNCTION}.Alias"}}]}))),
        ("the admin policy attached to a role", variant(set_props(ADMIN_POLICY, Roles=[{"Ref": "PublisherFunctionRole"}]))),
    ]


def cmd_invoke_selftest(repo: str) -> None:
    """The invoke check must refuse each bad variant of infra/template.yaml."""
    tpl = load_sam(os.path.join(repo, "infra", "template.yaml"))
    for what, bad in bad_variants(tpl):
        try:
            problems = invoke_problems(sam_transform(bad))
        except Exception as e:  # SAM itself refusing the variant would prove nothing
            record("FAIL", f"invoke check self-test: {what}", f"the variant did not transform: {type(e).__name__}: {e}")
            continue
        check(f"invoke check refuses a bad template: {what}", bool(problems),
              detail_ok=problems[0] if problems else "", detail_fail="the check passed it")


# --------------------------------------------------------------------------
# checkov skips must be justified one by one in infra/README.md
# --------------------------------------------------------------------------

def cmd_skips(repo: str, checkov_json: str) -> None:
    data = json.load(open(checkov_json, encoding="utf-8"))
    if isinstance(data, dict):
        data = [data]
    readme = open(os.path.join(repo, "infra", "README.md"), encoding="utf-8").read().splitlines()
    rows = [l for l in readme if "CKV_" in l]
    skipped, problems = [], []
    for report in data:
        for s in report.get("results", {}).get("skipped_checks", []):
            cid = s["check_id"]
            res = s.get("resource", "")
            logical = res.rsplit(".", 1)[-1] or os.path.basename(s.get("file_path", ""))
            if not logical:
                logical = os.path.basename(s.get("file_path", "")).rstrip(".")
            fname = os.path.basename(s.get("file_path", ""))
            skipped.append(f"{cid} {fname}:{logical}")
            reason = (s.get("check_result", {}).get("suppress_comment") or s.get("suppress_comment") or "").strip()
            if not reason or reason == "No comment provided":
                problems.append(f"{cid} on {logical} has no reason in the file")
            # A row names the check and "<file>: <resource>" (or the Dockerfile).
            where = fname if logical == fname else f"{fname}: {logical}"
            rx = re.compile(r"(^|[^\w.-])" + re.escape(where) + r"($|[^\w])")
            if not any(re.search(r"\b" + re.escape(cid) + r"\b", row) and rx.search(row) for row in rows):
                problems.append(f"{cid} on {where} is not justified in infra/README.md")
    # Every skip written in the files must show up as skipped in the report
    # (else checkov did not see it, e.g. after a format change).
    declared = 0
    for f in glob.glob(os.path.join(repo, "infra", "**", "*"), recursive=True):
        if os.path.isfile(f) and not f.endswith(".md") and not f.endswith(".py"):
            text = open(f, encoding="utf-8", errors="replace").read()
            declared += len(re.findall(r"checkov:skip=CKV_", text))
            declared += len(re.findall(r"^\s*- id: CKV_", text, re.M))
    if declared != len(skipped):
        problems.append(f"{declared} skips are declared in infra/ but checkov reported {len(skipped)}")
    check("checkov: every skip has a reason and a row in infra/README.md", not problems,
          detail_ok=f"{len(skipped)} skips: " + ", ".join(skipped), detail_fail="; ".join(problems))


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, repo = sys.argv[1], os.path.abspath(sys.argv[2])
    try:
        if cmd == "dockerfile":
            cmd_dockerfile(repo)
        elif cmd == "templates":
            cmd_templates(repo)
        elif cmd == "skips":
            cmd_skips(repo, sys.argv[3])
        elif cmd == "invoke":
            for path in sys.argv[3:] or [os.path.join(repo, "infra", "template.yaml")]:
                cmd_invoke(repo, os.path.abspath(path))
        elif cmd == "invoke-selftest":
            cmd_invoke_selftest(repo)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as e:  # a crash of the checker is a failed check, not a pass
        record("FAIL", f"{cmd}: checker error", f"{type(e).__name__}: {e}")
    return 1 if any(s == "FAIL" for s, _, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
