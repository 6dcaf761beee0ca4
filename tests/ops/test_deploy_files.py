"""Static checks of the deployment files: Dockerfile, docker-compose.yml, Prometheus config,
alert rules, Grafana dashboards, .env.example and the Kubernetes manifests under k8s/.

Nothing here needs Docker or a cluster. Run with scripts/ops-tests.sh (or `pytest -q tests/ops`
in a venv with tests/ops/requirements.txt installed).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_VERSION = "1.30"

# Kinds defined by CustomResourceDefinitions. kubernetes-validate only ships the schemas of
# the built-in Kubernetes API, so these cannot be schema-validated here (their schemas live
# in the operators' CRDs, which are not vendored). They get a structural check instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}
# Kustomize's own config file: not a Kubernetes API object.
KUSTOMIZE_API = "kustomize.config.k8s.io/"

VAR_RE = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")
PLACEHOLDER_RE = re.compile(r"change-me|REPLACE", re.IGNORECASE)

# PostgreSQL settings every database cloudlens runs on must carry, as the local cluster does
# (CLUSTER_CONF in src/db/cluster.rs): a session idle inside a transaction, or a client whose
# connection vanished, must not hold locks for long (an open event-writer transaction holds
# back every projector).
DB_SETTINGS = {
    "idle_in_transaction_session_timeout": "60s",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_all(path: Path) -> list:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def resolve_defaults(text: str) -> str:
    """`${VAR:-default}` / `${VAR-default}` -> default, as compose does when VAR is unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)


def image_tag(image: str) -> str | None:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(resolve_defaults(image))
    assert tag, f"{where}: image {image!r} has no tag"
    assert tag != "latest" and not tag.startswith("latest"), f"{where}: image {image!r} uses latest"


def env_example_vars() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=VALUE: {line!r}"
        out[key.strip()] = value.strip()
    return out


def postgres_settings(argv) -> dict[str, str]:
    """The `-c name=value` settings of a postgres command line (list or string form)."""
    if isinstance(argv, str):
        argv = argv.split()
    argv = [resolve_defaults(str(a)) for a in argv]
    out = {}
    for i, arg in enumerate(argv):
        if arg == "-c" and i + 1 < len(argv):
            setting = argv[i + 1]
        elif arg.startswith("-c") and len(arg) > 2:
            setting = arg[2:]
        elif arg.startswith("--") and "=" in arg:
            setting = arg[2:]
        else:
            continue
        name, _, value = setting.partition("=")
        out[name.strip().replace("-", "_")] = value.strip()
    return out


def assert_db_settings(settings: dict, where: str) -> None:
    for name, value in DB_SETTINGS.items():
        assert name in settings, f"{where}: {name} is not set (want {value})"
        assert str(settings[name]).strip("'\"") == value, \
            f"{where}: {name} = {settings[name]!r}, want {value}"


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def kustomization_paths(kfile: Path) -> tuple[list[Path], list[Path]]:
    """(resources, patch files) a kustomization.yaml refers to, as absolute paths."""
    k = load_yaml(kfile)
    resources = [(kfile.parent / r).resolve() for r in k.get("resources", []) or []]
    patches = []
    for p in (k.get("patches") or []) + (k.get("patchesStrategicMerge") or []):
        path = p.get("path") if isinstance(p, dict) else p
        if path:
            patches.append((kfile.parent / path).resolve())
    return resources, patches


def patch_files() -> set[Path]:
    out: set[Path] = set()
    for kfile in kustomizations():
        out.update(kustomization_paths(kfile)[1])
    return out


def k8s_documents() -> list[tuple[str, Path, dict]]:
    docs = []
    for path in k8s_files():
        for i, doc in enumerate(load_all(path)):
            rel = path.relative_to(ROOT)
            name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
            docs.append((f"{rel}#{i}:{doc.get('kind', '?')}/{name}", path, doc))
    return docs


def classify(path: Path, doc: dict) -> str:
    if str(doc.get("apiVersion", "")).startswith(KUSTOMIZE_API):
        return "kustomize"
    if path.resolve() in patch_files():
        return "patch"
    if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
        return "crd"
    return "builtin"


def base_doc(kind: str, name: str | None = None) -> dict:
    found = [
        d
        for p in (K8S / "base").glob("*.yaml")
        for d in load_all(p)
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected exactly one {kind} {name or ''} in k8s/base, found {len(found)}"
    return found[0]


def check_crd_structure(doc: dict, where: str) -> None:
    assert doc.get("apiVersion"), where
    assert doc.get("kind"), where
    assert (doc.get("metadata") or {}).get("name"), f"{where}: metadata.name missing"
    assert isinstance(doc.get("spec"), dict) and doc["spec"], f"{where}: spec missing"


def validate_builtin(doc: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: {e.message} at {'/'.join(str(x) for x in e.path)}")
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{where}: no Kubernetes {K8S_VERSION} schema for {e.kind} {e.api_version} "
                    "(a CRD? add it to CRD_KINDS)")


# --------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------

COMPOSE_PATH = ROOT / "docker-compose.yml"
REQUIRED_SERVICES = {
    "db": "timescale/timescaledb:2.19.3-pg15",
    "cloudlens": None,
    "prometheus": "prom/prometheus:v2.53.0",
    "grafana": "grafana/grafana:11.1.0",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = load_yaml(COMPOSE_PATH)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def test_compose_required_services_and_images(compose):
    services = compose["services"]
    for name, image in REQUIRED_SERVICES.items():
        assert name in services, f"service {name} missing"
        svc = services[name]
        if image:
            assert svc.get("image") == image, f"{name}: image {svc.get('image')!r}, want {image}"
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        if svc.get("image"):
            assert_pinned(svc["image"], f"compose service {name}")
    assert services["cloudlens"].get("build"), "cloudlens must be built from the Dockerfile"


def test_compose_healthchecks_and_restart(compose):
    for name, svc in compose["services"].items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name}: no healthcheck"
        assert svc.get("restart") == "unless-stopped", f"{name}: restart policy"
    assert "pg_isready" in str(compose["services"]["db"]["healthcheck"]["test"])
    assert "/readyz" in str(compose["services"]["cloudlens"]["healthcheck"]["test"])


def test_compose_cloudlens_depends_on_healthy_db(compose):
    dep = compose["services"]["cloudlens"].get("depends_on")
    assert isinstance(dep, dict), "depends_on must use the long form with a condition"
    assert dep.get("db", {}).get("condition") == "service_healthy"


def test_compose_db_settings(compose):
    command = compose["services"]["db"].get("command")
    assert command, "db: no command carrying the PostgreSQL settings"
    settings = postgres_settings(command)
    assert settings.get("max_connections"), "db: max_connections"
    assert_db_settings(settings, "compose service db")


def test_local_cluster_has_the_same_db_settings():
    """The deploy targets follow the local cluster's settings (src/db/cluster.rs)."""
    src = (ROOT / "src/db/cluster.rs").read_text(encoding="utf-8")
    conf = {}
    for m in re.finditer(r"^\s*([a-z_.]+)\s*=\s*(\S+)\s*$", src, re.MULTILINE):
        conf[m.group(1)] = m.group(2)
    assert_db_settings(conf, "src/db/cluster.rs CLUSTER_CONF")


def test_compose_cloudlens_environment(compose):
    env = compose["services"]["cloudlens"]["environment"]
    assert env["CLOUDLENS_LISTEN"] == "0.0.0.0:8080"
    url = env["DATABASE_URL"]
    assert url.startswith("postgres") and "@db:5432/" in url
    assert "${POSTGRES_PASSWORD" in url, "DATABASE_URL must take the password from the env"
    ports = [str(p) for p in compose["services"]["cloudlens"].get("ports", [])]
    assert any(p.endswith(":8080") for p in ports), ports


def _volumes(svc: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume of a service, short or long syntax."""
    out = []
    for v in svc.get("volumes", []) or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) == 1:
                continue  # anonymous volume
            out.append((parts[0], parts[1]))
        else:
            out.append((v.get("source", ""), v.get("target", "")))
    return out


def _is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~", "$"))


def test_compose_named_volumes_declared_and_used(compose):
    declared = set((compose.get("volumes") or {}).keys())
    assert declared, "no top-level named volumes"
    used = set()
    for name, svc in compose["services"].items():
        for source, _ in _volumes(svc):
            if not _is_bind(source):
                assert source in declared, f"{name}: volume {source} not declared at top level"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    for name in ("db", "prometheus", "grafana"):
        assert any(not _is_bind(s) for s, _ in _volumes(compose["services"][name])), \
            f"{name}: keeps its data in no named volume"


def test_compose_bind_mounts_exist(compose):
    for name, svc in compose["services"].items():
        for source, target in _volumes(svc):
            if _is_bind(source):
                assert source.startswith("./"), f"{name}: bind mount {source} must be repo-relative"
                assert (ROOT / source).exists(), f"{name}: bind-mounted {source} does not exist"


def test_compose_monitoring_mounts(compose):
    prom = dict((t, s) for s, t in _volumes(compose["services"]["prometheus"]))
    assert prom.get("/etc/prometheus/prometheus.yml") == "./deploy/prometheus/prometheus.yml"
    assert prom.get("/etc/prometheus/rules") == "./grafana/alerts"
    graf = dict((t, s) for s, t in _volumes(compose["services"]["grafana"]))
    assert graf.get("/etc/grafana/provisioning") == "./grafana/provisioning"
    assert graf.get("/var/lib/grafana/dashboards") == "./grafana/dashboards"
    env = compose["services"]["grafana"]["environment"]
    assert "${GRAFANA_ADMIN_PASSWORD" in str(env.get("GF_SECURITY_ADMIN_PASSWORD"))


def test_compose_variables_documented_in_env_example():
    text = COMPOSE_PATH.read_text(encoding="utf-8")
    referenced = {a or b for a, b in VAR_RE.findall(text)}
    assert referenced, "compose references no variables?"
    documented = set(env_example_vars())
    missing = referenced - documented
    assert not missing, f"referenced in docker-compose.yml but not in .env.example: {sorted(missing)}"


def test_env_example_has_no_real_secrets():
    for key, value in env_example_vars().items():
        if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
            assert PLACEHOLDER_RE.search(value), f".env.example: {key} looks like a real secret"


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, buf = [], ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instr, _, args = buf.partition(" ")
        lines.append((instr.upper(), args.strip()))
        buf = ""
    return lines


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    pats = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not line.startswith("!"):
            pats.append(line.rstrip("/"))
    return pats


def test_dockerfile_multistage_and_pinned():
    froms = [a for i, a in dockerfile_instructions() if i == "FROM"]
    assert len(froms) >= 2, "Dockerfile must be multi-stage"
    stages = set()
    for args in froms:
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        if image not in stages:
            assert_pinned(image, f"FROM {args}")
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2])
    assert froms[0].split()[0].startswith("rust:1-bookworm")
    assert froms[-1].split()[0].startswith("debian:bookworm-slim")
    for instr, args in dockerfile_instructions():
        assert ":latest" not in args, f"{instr} {args}: uses a latest tag"


def test_dockerfile_final_stage_non_root_and_runtime():
    instrs = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instrs) if ins == "FROM")
    final = instrs[last_from:]
    users = [a for i, a in final if i == "USER"]
    assert users, "final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "final stage runs as root"
    assert user == "10001" or "10001" in " ".join(a for _, a in final)
    exposes = " ".join(a for i, a in instrs if i == "EXPOSE").split()
    assert "8080" in [p.split("/")[0] for p in exposes]
    envs = " ".join(a for i, a in final if i == "ENV")
    assert "CLOUDLENS_LISTEN=0.0.0.0:8080" in envs
    assert [a for i, a in final if i == "ENTRYPOINT"][-1] == '["cloudlens"]'
    assert [a for i, a in final if i == "CMD"][-1] == '["serve"]'
    run = " ".join(a for i, a in final if i == "RUN")
    assert "ca-certificates" in run and "curl" in run
    build = " ".join(a for i, a in instrs[:last_from] if i == "RUN")
    assert "cargo build --release" in build and "--bin cloudlens" in build


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    ignored = dockerignore_patterns()
    for pat in ("target", "var", ".git"):
        assert pat in ignored, f".dockerignore must exclude {pat}/"
    copied = set()
    for instr, args in dockerfile_instructions():
        if instr not in ("COPY", "ADD"):
            continue
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            top = src.strip("/").split("/")[0]
            rel = src.strip("/")
            for pat in ignored:
                assert not (fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(top, pat)), \
                    f"COPY source {src} is excluded by .dockerignore pattern {pat}"
            copied.add(rel)
    for needed in ("Cargo.toml", "Cargo.lock", "loadtest/Cargo.toml", "src", "sql", "loadtest"):
        assert needed in copied, f"Dockerfile does not COPY {needed}"


# --------------------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------------------


def test_prometheus_config():
    cfg = load_yaml(ROOT / "deploy/prometheus/prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["cloudlens"]
    targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    assert "cloudlens:8080" in targets
    assert job.get("scrape_interval", cfg.get("global", {}).get("scrape_interval")) == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "/etc/prometheus/rules/*.yml" in cfg.get("rule_files", [])


def test_prometheus_rule_files_parse():
    rules = sorted((ROOT / "grafana/alerts").glob("*.yml"))
    if not rules:
        pytest.skip("no alert rules in grafana/alerts yet")
    for path in rules:
        doc = load_yaml(path)
        assert isinstance(doc, dict) and isinstance(doc.get("groups"), list), f"{path}: no groups"


RULES_PATH = ROOT / "grafana/alerts/cloudlens-rules.yml"


def alert_rules() -> dict[str, dict]:
    rules = {}
    for group in load_yaml(RULES_PATH)["groups"]:
        assert group.get("name") and group.get("rules"), f"rule group {group.get('name')!r} is empty"
        for rule in group["rules"]:
            name = rule.get("alert")
            assert name, f"{group['name']}: only alerting rules belong here, got {rule}"
            assert name not in rules, f"alert {name} defined twice"
            rules[name] = rule
    return rules


def duration_seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+)(ms|s|m|h|d)", d):
        assert m.start() == pos, f"bad duration {d!r}"
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    assert pos == len(d) and pos > 0, f"bad duration {d!r}"
    return total


def test_alert_rules_structure():
    for name, rule in alert_rules().items():
        assert str(rule.get("expr", "")).strip(), f"{name}: no expr"
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), f"{name}: severity"
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), f"{name}: summary and description"
        duration_seconds(rule.get("for", "0s"))


def test_alert_event_writer_stall():
    rule = alert_rules()["CloudlensEventWriterStalled"]
    expr = rule["expr"]
    assert "cloudlens_event_writer_stalled" in expr or "cloudlens_oldest_writer_transaction_seconds" in expr
    assert duration_seconds(rule.get("for", "0s")) <= 15, "a writer stall must be reported within seconds"
    assert rule["labels"]["severity"] == "critical"
    desc = rule["annotations"]["description"]
    for needed in ("event_writers", "pg_stat_activity", "10 s"):
        assert needed in desc, f"CloudlensEventWriterStalled: the description should mention {needed!r}"


def test_alert_periodic_jobs():
    rules = alert_rules()
    expr = rules["CloudlensPeriodicJobFailing"]["expr"]
    assert "cloudlens_scheduled_runs_total" in expr and 'outcome="error"' in expr
    # Periodic jobs are labelled `task` (`job` is Prometheus' scrape job).
    assert "task" in expr


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not on PATH")
    out = subprocess.run([promtool, "check", "rules", str(RULES_PATH)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------------------
# Grafana dashboards
# --------------------------------------------------------------------------------------

DASHBOARDS = sorted((ROOT / "grafana/dashboards").glob("*.json"))
DATASOURCE_UID = "cloudlens-prometheus"
# The business dashboard reads the read models from PostgreSQL (role cloudlens_grafana);
# its SQL is run against a real database by tests/api/dashboards.rs.
SQL_DASHBOARDS = {"business.json": "cloudlens-postgres"}


def dashboard(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def dashboard_exprs(doc: dict) -> list[str]:
    return [t.get("expr", "") for p in doc["panels"] for t in p.get("targets") or []]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    doc = dashboard(path)
    assert doc.get("uid", "").startswith("cloudlens-") and doc.get("title", "").startswith("cloudlens / ")
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    cells = {}
    for panel in doc["panels"]:
        where = f"{path.name}: panel {panel['id']} {panel.get('title')!r}"
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, f"{where}: gridPos {g}"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{where}: overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
        if panel["type"] == "row":
            assert g["w"] == 24 and g["h"] == 1, f"{where}: a row spans the width, one unit high"
            continue
        if panel["type"] == "text":
            continue
        uid = SQL_DASHBOARDS.get(path.name, DATASOURCE_UID)
        assert panel["datasource"]["uid"] == uid, where
        assert panel["targets"], f"{where}: no targets"
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == uid, where
            query = t.get("rawSql" if path.name in SQL_DASHBOARDS else "expr", "")
            assert query.strip() and t.get("refId"), where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"


def test_every_metric_is_on_a_dashboard():
    """Every metric src/telemetry.rs or a context's metrics.rs defines appears in some
    dashboard expression."""
    sources = [ROOT / "src/telemetry.rs", *sorted(ROOT.glob("src/*/metrics.rs"))]
    defined = set(re.findall(r'"(cloudlens_[a-z_]+)"',
                             " ".join(p.read_text(encoding="utf-8") for p in sources)))
    assert "cloudlens_tagging_runs_total" in defined
    assert defined
    exprs = " ".join(e for p in DASHBOARDS for e in dashboard_exprs(dashboard(p)))
    missing = sorted(m for m in defined if m not in exprs)
    assert not missing, f"metrics on no dashboard: {missing}"


def test_dashboard_writer_stall_and_periodic_jobs():
    panels = [p for path in DASHBOARDS for p in dashboard(path)["panels"]]

    def with_metric(metric):
        return [p for p in panels if any(metric in t.get("expr", "") for t in p.get("targets") or [])]

    # The oldest writer's age against the 5 s stall threshold, drawn as a line.
    lined = [p for p in with_metric("cloudlens_oldest_writer_transaction_seconds")
             if p["type"] == "timeseries"
             and p["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line"]
    assert lined, "no timeseries of the oldest writer transaction with a threshold line"
    steps = lined[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert 5 in [s["value"] for s in steps], "the stall threshold line is at 5 s"
    assert lined[0]["fieldConfig"]["defaults"]["unit"] == "s"
    assert with_metric("cloudlens_event_writer_stalled")
    for metric in ("cloudlens_scheduled_runs_total", "cloudlens_scheduled_leader"):
        found = with_metric(metric)
        assert found, f"no panel shows {metric}"
        for p in found:
            for t in p["targets"]:
                # Periodic jobs are labelled `task` (`job` is the scrape job).
                assert "by (job" not in t["expr"] and "{{job}}" not in t.get("legendFormat", ""), \
                    f"panel {p['title']!r}: use task for the periodic job"
    assert with_metric("cloudlens_idempotency_keys_purged_total")


# --------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------

DOCS = k8s_documents()


def test_k8s_has_manifests():
    kinds = {d.get("kind") for _, _, d in DOCS}
    for kind in ("Namespace", "ConfigMap", "Secret", "Deployment", "Service",
                 "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
                 "NetworkPolicy", "StatefulSet", "Cluster", "Kustomization"):
        assert kind in kinds, f"no {kind} under k8s/"


@pytest.mark.parametrize("where,path,doc", DOCS, ids=[w for w, _, _ in DOCS])
def test_k8s_document(where, path, doc):
    assert isinstance(doc, dict), f"{where}: not a mapping"
    kind = classify(path, doc)
    if kind == "kustomize":
        assert doc.get("kind") == "Kustomization"
    elif kind == "patch":
        # Strategic-merge patches are partial objects, so they cannot pass a strict schema
        # check on their own; the rendered overlays are validated in full below.
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name")
        base_doc(doc["kind"], doc["metadata"]["name"])  # the patch has a target
    elif kind == "crd":
        # No schema for custom resources in kubernetes-validate (see CRD_KINDS).
        check_crd_structure(doc, where)
    else:
        validate_builtin(doc, where)
    for c in _containers(doc):
        assert_pinned(c["image"], f"{where} container {c['name']}")


def _containers(doc: dict) -> list[dict]:
    try:
        spec = pod_spec(doc)
    except (KeyError, TypeError):
        return []
    return [c for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
            if "image" in c]


@pytest.mark.parametrize("kfile", kustomizations(), ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomization_paths_exist(kfile):
    resources, patches = kustomization_paths(kfile)
    assert resources, f"{kfile}: no resources"
    for p in resources + patches:
        assert p.exists(), f"{kfile.relative_to(ROOT)}: {p} does not exist"
        if p.is_dir():
            assert (p / "kustomization.yaml").exists(), f"{p}: directory without kustomization.yaml"


def test_secret_template_not_in_kustomization_and_placeholder_only():
    resources, _ = kustomization_paths(K8S / "base/kustomization.yaml")
    assert (K8S / "base/secret.example.yaml").resolve() not in resources, \
        "the Secret template must not be applied; the real Secret is created out of band"
    secrets = [(w, d) for w, _, d in DOCS if d.get("kind") == "Secret"]
    assert secrets
    for where, doc in secrets:
        assert "secret.example.yaml" in where, f"{where}: real Secret manifests do not belong in git"
        values = dict(doc.get("stringData") or {})
        for k, v in (doc.get("data") or {}).items():
            values[k] = base64.b64decode(v).decode("utf-8", "replace")
        assert values
        for k, v in values.items():
            assert PLACEHOLDER_RE.search(str(v)), f"{where}: {k} does not look like a placeholder"


def test_deployment_base():
    dep = base_doc("Deployment", "cloudlens")
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    tmpl = spec["template"]
    labels = tmpl["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    ann = tmpl["metadata"].get("annotations", {})
    assert ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "8080"
    pod = tmpl["spec"]
    psc = pod.get("securityContext", {})
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in c
    assert c["resources"]["requests"] and c["resources"]["limits"]
    sc = c["securityContext"]
    assert (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", psc.get("runAsUser")) == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert [p["containerPort"] for p in c["ports"]] == [8080]
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    secret = load_all(K8S / "base/secret.example.yaml")[0]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    cm_names = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    assert cm_names
    for name in cm_names:
        cm = base_doc("ConfigMap", name)
        assert cm["data"]["CLOUDLENS_LISTEN"] == "0.0.0.0:8080"
        assert "DATABASE_URL" not in cm["data"], "the password belongs in the Secret"


def test_selectors_match_deployment():
    labels = base_doc("Deployment", "cloudlens")["spec"]["template"]["metadata"]["labels"]

    def matches(sel: dict) -> bool:
        return all(labels.get(k) == v for k, v in sel.items())

    assert matches(base_doc("Service", "cloudlens")["spec"]["selector"])
    assert matches(base_doc("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert matches(base_doc("ServiceMonitor")["spec"]["selector"]["matchLabels"])
    np = [d for p in [K8S / "base/networkpolicy.yaml"] for d in load_all(p)
          if d["metadata"]["name"] == "cloudlens"][0]
    assert matches(np["spec"]["podSelector"]["matchLabels"])


def test_hpa_pdb_networkpolicy():
    hpa = base_doc("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "cloudlens"
    cpu = [m for m in hpa["spec"]["metrics"] if m["resource"]["name"] == "cpu"][0]
    assert cpu["resource"]["target"]["averageUtilization"] == 70
    pdb = base_doc("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    np = [d for d in load_all(K8S / "base/networkpolicy.yaml") if d["metadata"]["name"] == "cloudlens"][0]
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for r in np["spec"]["ingress"] for p in r["ports"]}
    assert ingress_ports == {8080}
    egress_ports = {p["port"] for r in np["spec"]["egress"] for p in r["ports"]}
    assert egress_ports == {5432, 53}


def test_timescaledb_statefulset():
    sts = base_doc("StatefulSet", "timescaledb")
    svc = base_doc("Service", "timescaledb")
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["volumeClaimTemplates"]
    (c,) = pod_spec(sts)["containers"]
    assert c["image"] == "timescale/timescaledb:2.19.3-pg15"
    for probe in ("readinessProbe", "livenessProbe"):
        assert "pg_isready" in " ".join(c[probe]["exec"]["command"])
    assert c["resources"]["requests"] and c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]
    mounts = {m["name"] for m in c["volumeMounts"]}
    assert {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]} <= mounts
    settings = postgres_settings(c.get("command", []) + c.get("args", []))
    assert settings.get("max_connections"), "timescaledb: max_connections"
    assert_db_settings(settings, "k8s/base timescaledb StatefulSet")
    # the Deployment's DATABASE_URL template points at this Service
    secret = load_all(K8S / "base/secret.example.yaml")[0]
    assert f"@{svc['metadata']['name']}:5432/" in secret["stringData"]["DATABASE_URL"]


def test_cnpg_cluster():
    (cluster,) = load_all(K8S / "cnpg/cluster.yaml")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["kind"] == "Cluster"
    spec = cluster["spec"]
    assert spec["instances"] == 3
    assert_pinned(spec["imageName"], "cnpg imageName")
    assert "timescaledb" in spec["postgresql"]["shared_preload_libraries"]
    params = spec["postgresql"]["parameters"]
    for name, value in params.items():
        assert isinstance(value, str), f"cnpg parameter {name}: CNPG wants strings, got {value!r}"
    assert_db_settings(params, "k8s/cnpg Cluster postgresql.parameters")
    sql = " ".join(spec["bootstrap"]["initdb"]["postInitApplicationSQL"])
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in sql
    assert spec["storage"]["size"]
    assert spec["monitoring"]
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert f"{cluster['metadata']['name']}-rw" in readme


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_timescaledb_args_keep_db_settings(overlay):
    """A strategic-merge patch replaces a container's args as a whole: an overlay that sets
    args must repeat the settings."""
    _, patches = kustomization_paths(K8S / "overlays" / overlay / "kustomization.yaml")
    for p in patches:
        for d in load_all(p):
            if d.get("kind") != "StatefulSet":
                continue
            for c in pod_spec(d).get("containers") or []:
                if "args" in c or "command" in c:
                    settings = postgres_settings(c.get("command", []) + c.get("args", []))
                    assert_db_settings(settings, f"{p.relative_to(ROOT)} container {c['name']}")


@pytest.mark.parametrize("overlay,replicas", [("dev", 1), ("prod", 3)])
def test_overlay_replicas(overlay, replicas):
    _, patches = kustomization_paths(K8S / "overlays" / overlay / "kustomization.yaml")
    deps = [d for p in patches for d in load_all(p) if d.get("kind") == "Deployment"]
    assert deps and deps[0]["spec"]["replicas"] == replicas
    assert deps[0]["spec"]["template"]["spec"]["containers"][0]["resources"]


def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _render(target: str) -> list[dict]:
    """The documents `kustomize build k8s/<target>` prints (skips without kustomize/kubectl)."""
    cmd = _kustomize_cmd()
    if not cmd:
        pytest.skip("neither kustomize nor kubectl on PATH")
    out = subprocess.run(cmd + [str(K8S / target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs
    return docs


def _validate_rendered(target: str, docs: list[dict]) -> None:
    for doc in docs:
        where = f"{target}: {doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace", "cloudlens") == "cloudlens" or doc["kind"] == "Namespace"
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            check_crd_structure(doc, where)  # no schema available, see CRD_KINDS
        else:
            validate_builtin(doc, where)
        for c in _containers(doc):
            assert_pinned(c["image"], f"{where} container {c['name']}")


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/prod"])
def test_rendered_kustomization_validates(target):
    docs = _render(target)
    _validate_rendered(target, docs)
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "timescaledb"]
    (db,) = pod_spec(sts)["containers"]
    assert_db_settings(postgres_settings(db.get("command", []) + db.get("args", [])),
                       f"{target}: rendered timescaledb StatefulSet")
    deps = [d for d in docs if d["kind"] == "Deployment"]
    want = {"base": 2, "overlays/dev": 1, "overlays/prod": 3}[target]
    assert deps[0]["spec"]["replicas"] == want
    hpa = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"][0]
    assert hpa["spec"]["minReplicas"] == want, "HPA minimum would override the replica count"
    # The single-instance database has no standby: no replica URL (queries on the primary).
    (c,) = pod_spec(deps[0])["containers"]
    assert REPLICA_VAR not in {e["name"] for e in c.get("env", [])}, \
        f"{target}: {REPLICA_VAR} without a standby"
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        assert REPLICA_VAR not in (cm.get("data") or {}), f"{target}: {REPLICA_VAR} in a ConfigMap"


# --------------------------------------------------------------------------------------
# Kubernetes: the CloudNativePG variant (k8s/cnpg, k8s/overlays/cnpg)
# --------------------------------------------------------------------------------------

REPLICA_VAR = "CLOUDLENS_REPLICA_URL"
CNPG_OVERLAY = "overlays/cnpg"

# What the CloudNativePG operator generates for a Cluster <c> and the tests below assume
# (they never exist in git, so they are checked against this list):
#
# - Secret <c>-app (type kubernetes.io/basic-auth) for the owner of the application
#   database (bootstrap.initdb.owner), with these keys (pkg/specs/secrets.go, CreateSecret;
#   docs "Connecting from an application"). `uri` is
#   postgresql://<user>:<password>@<c>-rw.<namespace>:5432/<dbname> (the password
#   percent-encoded), `host` is <c>-rw, `port` 5432. A generated password is URL-safe.
CNPG_APP_SECRET_KEYS = {
    "username", "user", "password", "dbname", "host", "port", "pgpass",
    "uri", "jdbc-uri", "fqdn-uri", "fqdn-jdbc-uri",
}
# - Services <c>-rw (the primary), <c>-ro (hot standbys only) and <c>-r (any instance), all
#   ClusterIP on 5432, selecting the instance pods by these labels ("Service management";
#   -ro and -r can be switched off with spec.managed.services.disabledDefaultServices).
#   Instance pods carry cnpg.io/cluster: <c> and cnpg.io/instanceRole: primary|replica
#   (plus the deprecated role: primary|replica, CNPG < 1.24 selects on that one).
CNPG_SERVICE_ROLES = {"rw": ["primary"], "ro": ["replica"], "r": ["primary", "replica"]}


def cnpg_cluster() -> dict:
    (cluster,) = load_all(K8S / "cnpg/cluster.yaml")
    return cluster


def cnpg_pod_labels(cluster: str, role: str) -> dict[str, str]:
    """The labels of a CNPG instance pod (see CNPG_SERVICE_ROLES)."""
    return {"cnpg.io/cluster": cluster, "cnpg.io/instanceRole": role, "role": role,
            "cnpg.io/podRole": "instance"}


def selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a pod's labels."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def port_allowed(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == "TCP"
                            for p in ports)


def peer_allows(rule_peers: list | None, labels: dict[str, str]) -> bool:
    """Whether a `to`/`from` list admits a pod with `labels` in the policy's own namespace."""
    if not rule_peers:
        return True  # empty or missing: all peers
    for peer in rule_peers:
        if "ipBlock" in peer:
            continue
        if "namespaceSelector" in peer and (peer["namespaceSelector"] or {}) != {}:
            # A namespace selector other than "all" would need the namespace's labels.
            continue
        if selector_matches(peer.get("podSelector") or {}, labels):
            return True
    return False


_ENV_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def secret_placeholder(name: str, key: str) -> str:
    """Stands for the value of key `key` of Secret `name`; parses as a URL user, password,
    host or path segment."""
    return f"secret-{name}-{key}"


def container_env(container: dict, configmaps: dict[str, dict] | None = None) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps first, then
    `env` in order, `$(NAME)` expanded from the variables defined before it (an unknown
    name stays as written, `$$` is a literal `$`). Secret values are placeholders
    (secret_placeholder)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src and configmaps is not None:
            cm = configmaps[src["configMapRef"]["name"]]
            env.update({src.get("prefix", "") + k: str(v) for k, v in (cm.get("data") or {}).items()})
    for e in container.get("env") or []:
        if "value" in e:
            def sub(m, known=dict(env)):
                if m.group(0) == "$$":
                    return "$"
                return known.get(m.group(1), m.group(0))
            env[e["name"]] = _ENV_REF.sub(sub, str(e["value"]))
        else:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                env[e["name"]] = secret_placeholder(ref["name"], ref["key"])
            else:
                env[e["name"]] = f"ref-{e['name']}"
    return env


def secret_refs(container: dict) -> list[tuple[str, str, str]]:
    """(variable, Secret name, key) of every secretKeyRef in the container's env."""
    return [(e["name"], e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env") or []
            if "secretKeyRef" in (e.get("valueFrom") or {})]


def check_cnpg_wiring(container: dict, cluster: str, where: str,
                      configmaps: dict[str, dict] | None = None) -> None:
    """DATABASE_URL from the app Secret's `uri` (the -rw Service), CLOUDLENS_REPLICA_URL a
    postgres URL to the -ro Service with the app Secret's credentials; every referenced
    Secret key is one CNPG generates."""
    app_secret = f"{cluster}-app"
    refs = secret_refs(container)
    assert refs, f"{where}: no secretKeyRef at all"
    for var, name, key in refs:
        assert name == app_secret, \
            f"{where}: {var} reads Secret {name!r}; with CNPG everything comes from {app_secret}"
        assert key in CNPG_APP_SECRET_KEYS, \
            f"{where}: {var} reads key {key!r}, which CNPG does not write into {app_secret}"
    names = [e["name"] for e in container.get("env") or []]
    assert len(names) == len(set(names)), f"{where}: duplicate env names {names}"

    env = container_env(container, configmaps)
    assert env.get("DATABASE_URL") == secret_placeholder(app_secret, "uri"), \
        f"{where}: DATABASE_URL must be {app_secret} key uri (the {cluster}-rw Service)"

    url = env.get(REPLICA_VAR)
    assert url, f"{where}: {REPLICA_VAR} is not set"
    assert "$(" not in url, \
        f"{where}: {REPLICA_VAR} = {url!r} refers to a variable not defined before it"
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    assert parts.scheme in ("postgres", "postgresql"), f"{where}: {REPLICA_VAR} {url!r}"
    host = parts.hostname or ""
    assert host == f"{cluster}-ro" or host.startswith(f"{cluster}-ro."), \
        f"{where}: {REPLICA_VAR} must point at the read-only Service {cluster}-ro, not {host!r}"
    assert parts.port in (None, 5432), f"{where}: {REPLICA_VAR} port {parts.port}"
    assert parts.username == secret_placeholder(app_secret, "username"), \
        f"{where}: {REPLICA_VAR} user must be {app_secret} key username"
    assert parts.password == secret_placeholder(app_secret, "password"), \
        f"{where}: {REPLICA_VAR} password must be {app_secret} key password"
    assert parts.path == "/" + secret_placeholder(app_secret, "dbname"), \
        f"{where}: {REPLICA_VAR} database must be {app_secret} key dbname"


def test_base_has_no_replica():
    """The base runs one database instance: no standby, so no CLOUDLENS_REPLICA_URL."""
    (c,) = pod_spec(base_doc("Deployment", "cloudlens"))["containers"]
    assert REPLICA_VAR not in {e["name"] for e in c.get("env", [])}
    assert REPLICA_VAR not in base_doc("ConfigMap", "cloudlens-config")["data"]
    secret = load_all(K8S / "base/secret.example.yaml")[0]
    assert REPLICA_VAR not in secret["stringData"]
    assert base_doc("StatefulSet", "timescaledb")["spec"]["replicas"] == 1


def test_cnpg_cluster_has_a_standby_behind_ro():
    cluster = cnpg_cluster()
    spec = cluster["spec"]
    assert spec["instances"] >= 2, "the -ro Service needs at least one hot standby"
    disabled = ((spec.get("managed") or {}).get("services") or {}).get("disabledDefaultServices") or []
    assert "ro" not in disabled, f"{REPLICA_VAR} points at {cluster['metadata']['name']}-ro"
    # Queries on the standbys: the primary keeps the rows they still read.
    assert spec["postgresql"]["parameters"].get("hot_standby_feedback") == "on"
    assert spec["bootstrap"]["initdb"]["owner"], "the app Secret is made for the owner"


def test_cnpg_overlay_sources():
    """Without a renderer: the overlay's own files wire both URLs and drop the StatefulSet."""
    kfile = K8S / CNPG_OVERLAY / "kustomization.yaml"
    resources, patches = kustomization_paths(kfile)
    assert (K8S / "cnpg").resolve() in resources, "the overlay deploys the CNPG cluster"
    assert (K8S / "overlays/prod").resolve() in resources
    assert load_yaml(K8S / "cnpg/kustomization.yaml")["resources"] == ["cluster.yaml"]
    deleted = {(d["kind"], d["metadata"]["name"]) for p in patches for d in load_all(p)
               if d.get("$patch") == "delete"}
    assert {("StatefulSet", "timescaledb"), ("Service", "timescaledb"),
            ("NetworkPolicy", "timescaledb")} <= deleted
    for p in patches:
        assert len(load_all(p)) == 1, f"{p.name}: one patch per file (kustomize 5.5 crashes " \
                                      "on several $patch: delete in one file)"
    deps = [d for p in patches for d in load_all(p) if d.get("kind") == "Deployment"]
    assert len(deps) == 1
    (c,) = pod_spec(deps[0])["containers"]
    check_cnpg_wiring(c, cnpg_cluster()["metadata"]["name"], f"{CNPG_OVERLAY} Deployment patch")


def test_rendered_cnpg_overlay():
    docs = _render(CNPG_OVERLAY)
    _validate_rendered(CNPG_OVERLAY, docs)
    cluster = cnpg_cluster()
    name = cluster["metadata"]["name"]

    clusters = [d for d in docs if d["kind"] == "Cluster"]
    assert len(clusters) == 1 and clusters[0]["metadata"]["name"] == name
    assert clusters[0]["metadata"]["namespace"] == "cloudlens"
    assert clusters[0]["spec"]["instances"] >= 2
    # The StatefulSet database and everything that belongs to it are gone.
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    assert not [d for d in docs if "timescaledb" in d["metadata"]["name"]]
    # Nothing in git defines the Secrets CNPG generates, and nothing needs cloudlens-db.
    assert not [d for d in docs if d["kind"] == "Secret"]

    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (c,) = pod_spec(dep)["containers"]
    check_cnpg_wiring(c, name, f"{CNPG_OVERLAY}: rendered Deployment", configmaps)
    assert dep["spec"]["replicas"] == 3, "the cnpg overlay builds on prod"

    # The app reaches every instance behind -rw, -ro and -r on 5432 (policies act on pods,
    # after the Service's address translation).
    app_labels = dep["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for svc, roles in CNPG_SERVICE_ROLES.items():
        for role in roles:
            pod = cnpg_pod_labels(name, role)
            egress_from_app = [p for p in policies
                               if selector_matches(p["spec"]["podSelector"], app_labels)
                               and "Egress" in p["spec"].get("policyTypes", [])]
            for p in egress_from_app:
                assert any(peer_allows(r.get("to"), pod) and port_allowed(r, 5432)
                           for r in p["spec"].get("egress") or []), \
                    f"NetworkPolicy {p['metadata']['name']} blocks cloudlens -> {name}-{svc} ({role})"
            ingress_to_db = [p for p in policies
                             if selector_matches(p["spec"]["podSelector"], pod)
                             and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
            for p in ingress_to_db:
                assert any(peer_allows(r.get("from"), app_labels) and port_allowed(r, 5432)
                           for r in p["spec"].get("ingress") or []), \
                    f"NetworkPolicy {p['metadata']['name']} blocks {name}-{svc} ({role}) <- cloudlens"
    assert any(selector_matches(p["spec"]["podSelector"], app_labels) for p in policies), \
        "the cloudlens NetworkPolicy is still there"

    # Connection budget on the primary (queries fall back to it when no standby answers).
    hpa = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"][0]
    pool = int(configmaps["cloudlens-config"]["data"]["CLOUDLENS_POOL_SIZE"])
    max_conn = int(clusters[0]["spec"]["postgresql"]["parameters"]["max_connections"])
    assert hpa["spec"]["maxReplicas"] * (pool + 6) < max_conn


def test_readme_documents_the_replica():
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    name = cnpg_cluster()["metadata"]["name"]
    for needle in (f"{name}-ro", f"{name}-rw", f"{name}-app", REPLICA_VAR, "min_position",
                   "Retry-After", "overlays/cnpg", "fall back", "projectors", "feed"):
        assert needle in readme, f"k8s/README.md does not mention {needle!r}"
