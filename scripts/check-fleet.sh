#!/usr/bin/env bash
# Checks of the k3s/ manifests (stores, cloud, fleet) and the store profiles.
#
#   scripts/check-fleet.sh
#
# 1. kustomize   every leaf kustomization under k3s/ (each store overlay, cloud,
#                fleet, system/*) builds with `kubectl kustomize`.
# 2. validate    every rendered object validates offline with
#                `kubernetes-validate --strict -k 1.33.0`. k3s/fleet/ is made of
#                Argo CD CRDs (ApplicationSet, AppProject, Application) whose
#                schemas kubernetes-validate does not have: only its built-in
#                kinds (if any) are validated, the CRDs are counted and skipped.
# 3. checkov     `checkov --skip-download` on the rendered output: no failed
#                check except those listed, with a reason, in
#                k3s/checkov-skips.yaml (matched per check id and resource).
# 4. policy      Pod Security "restricted" on every workload in the storelink
#                namespaces (namespace labels, non-root, read-only root fs, no
#                privilege escalation, drop ALL, seccomp RuntimeDefault, no
#                hostPath/host namespaces/hostPort), a non-root pod's Secret
#                volumes readable (fsGroup or a world-readable mode), every
#                rendered kind whitelisted by the AppProject that syncs it,
#                every store object in
#                namespace storelink, and each store's consistency: directory
#                name = store.toml [store].id = fleet.yaml store, region
#                likewise, a known wave, squat.ai/serial = number of
#                [[scanners]], the rendered profile = store.toml, and the Argo
#                CD sync windows (k3s/fleet/appproject-stores.yaml) up to date.
# 5. profiles    every store.toml passes `store-agent config check`
#                (binary: $STORE_AGENT_BIN, default target/debug/store-agent).
#
# Installs what it needs if missing: kubernetes-validate and checkov (pinned)
# into a venv under ${STORELINK_CACHE:-$HOME/.cache/storelink}/venv. Needs
# kubectl (with its built-in kustomize) on PATH.
# Prints one summary line per check; exits non-zero if any check failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1

K8S_VERSION=1.33.0
KV_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
cache="${STORELINK_CACHE:-$HOME/.cache/storelink}"
venv="$cache/venv"
agent_bin="${STORE_AGENT_BIN:-target/debug/store-agent}"

failed=0
npass=0
nfail=0
summary=()
pass() { summary+=("PASS  $1"); echo "== PASS: $1"; npass=$((npass + 1)); }
fail() { summary+=("FAIL  $1"); echo "== FAIL: $1"; failed=1; nfail=$((nfail + 1)); }
log() { echo "[check-fleet] $*"; }

# --- tools -----------------------------------------------------------------
if ! command -v kubectl >/dev/null 2>&1; then
  echo "check-fleet: kubectl not found on PATH (needed for 'kubectl kustomize')" >&2
  exit 1
fi

stamp="$venv/.storelink-kv$KV_VERSION-checkov$CHECKOV_VERSION"
if [ ! -f "$stamp" ]; then
  log "installing kubernetes-validate==$KV_VERSION checkov==$CHECKOV_VERSION into $venv"
  mkdir -p "$cache"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv for `-m venv`.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -q >/dev/null || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "check-fleet: cannot create a venv (install python3-venv)" >&2; exit 1; }
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check \
      "kubernetes-validate==$KV_VERSION" "checkov==$CHECKOV_VERSION" pyyaml \
    || { echo "check-fleet: pip install failed" >&2; exit 1; }
  touch "$stamp"
fi
PY="$venv/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- 1. kustomize build ------------------------------------------------------
# Leaves: kustomizations (not Components) that no other kustomization under
# k3s/ uses as a resource or component.
mapfile -t leaves < <("$PY" - <<'PY'
import pathlib, yaml
root = pathlib.Path("k3s")
dirs, used = {}, set()
for f in sorted(root.rglob("kustomization.yaml")):
    d = f.parent.resolve()
    k = yaml.safe_load(f.read_text()) or {}
    dirs[d] = k.get("kind", "Kustomization")
    for ref in (k.get("resources") or []) + (k.get("components") or []):
        p = (d / ref).resolve()
        if p.is_dir():
            used.add(p)
cwd = pathlib.Path.cwd().resolve()
for d, kind in dirs.items():
    if kind != "Component" and d not in used:
        print(d.relative_to(cwd))
PY
)
if [ "${#leaves[@]}" -eq 0 ]; then
  fail "kustomize: no kustomization found under k3s/"
else
  bad=0
  for d in "${leaves[@]}"; do
    out="$work/$(echo "$d" | tr '/' '_').yaml"
    if ! kubectl kustomize "$d" >"$out" 2>"$work/err"; then
      log "kustomize build failed: $d"; sed 's/^/    /' "$work/err"
      rm -f "$out"; bad=1
    fi
  done
  if [ "$bad" -eq 0 ]; then
    pass "kustomize: ${#leaves[@]} overlays build (${leaves[*]})"
  else
    fail "kustomize: some overlays do not build"
  fi
fi

# --- 2. kubernetes-validate ----------------------------------------------------
bad=0; nfiles=0; crds=0
mkdir -p "$work/validate"
for f in "$work"/k3s_*.yaml; do
  [ -f "$f" ] || continue
  base="$(basename "$f")"
  # Keep only built-in kinds (Argo CD and other CRDs have no schema here).
  n=$("$PY" - "$f" "$work/validate/$base" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
builtin = [d for d in docs if d.get("apiVersion", "").split("/")[0] not in ("argoproj.io",)]
with open(sys.argv[2], "w") as out:
    yaml.safe_dump_all(builtin, out, sort_keys=False)
print(len(docs) - len(builtin))
PY
)
  crds=$((crds + n))
  if [ ! -s "$work/validate/$base" ] || [ "$(head -c 3 "$work/validate/$base")" = "[]" ]; then
    continue
  fi
  nfiles=$((nfiles + 1))
  if ! "$venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" --quiet "$work/validate/$base" >"$work/err" 2>&1; then
    log "kubernetes-validate failed for $base:"; sed 's/^/    /' "$work/err"; bad=1
  fi
done
if [ "$bad" -eq 0 ]; then
  pass "validate: $nfiles renders valid against Kubernetes $K8S_VERSION (strict); $crds Argo CD CRD objects (k3s/fleet) not schema-validated"
else
  fail "validate: kubernetes-validate --strict -k $K8S_VERSION reported errors"
fi

# --- 3. checkov ----------------------------------------------------------------
mkdir -p "$work/checkov"
cp "$work"/k3s_*.yaml "$work/checkov/" 2>/dev/null
"$venv/bin/checkov" -d "$work/checkov" --framework kubernetes --skip-download \
  --compact -o json >"$work/checkov.json" 2>"$work/checkov.err"
if "$PY" - "$work/checkov.json" k3s/checkov-skips.yaml <<'PY'
import fnmatch, json, sys, yaml
raw = open(sys.argv[1]).read().strip()
if not raw:
    print("    checkov produced no output"); sys.exit(1)
reports = json.loads(raw)
reports = reports if isinstance(reports, list) else [reports]
skips = (yaml.safe_load(open(sys.argv[2])) or {}).get("skips") or []
ok = True
for s in skips:
    if not str(s.get("reason", "")).strip():
        print(f"    skip {s.get('check')} has no reason"); ok = False
used, failures, passed = set(), [], 0
for r in reports:
    # A render checkov could not parse is a render it did not check.
    errors = (r.get("summary") or {}).get("parsing_errors", r.get("parsing_errors", 0))
    if errors:
        print(f"    checkov could not parse {errors} file(s)"); ok = False
    res = r.get("results", {})
    passed += len(res.get("passed_checks", []))
    for f in res.get("failed_checks", []):
        hit = [i for i, s in enumerate(skips)
               if s.get("check") == f["check_id"]
               and any(fnmatch.fnmatchcase(f["resource"], pat) for pat in s.get("resources", []))]
        if hit:
            used.update(hit)
        else:
            failures.append(f)
for f in failures:
    print(f"    {f['check_id']} {f['resource']} ({f['file_path'].lstrip('/')}): {f['check_name']}")
for i, s in enumerate(skips):
    if i not in used:
        print(f"    note: skip {s.get('check')} {s.get('resources')} matched nothing (stale?)")
print(f"    checkov: {passed} passed, {len(failures)} failed outside k3s/checkov-skips.yaml, {len(skips)} listed skips")
if passed == 0:
    print("    checkov passed no check at all: it scanned nothing"); ok = False
sys.exit(0 if ok and not failures else 1)
PY
then
  pass "checkov: no failure outside k3s/checkov-skips.yaml"
else
  fail "checkov: failed checks (fix them, or list them with a reason in k3s/checkov-skips.yaml)"
fi

# --- 4. policy and store consistency -----------------------------------------
if "$PY" - "$work" <<'PY'
import pathlib, subprocess, sys, tomllib, yaml
work = pathlib.Path(sys.argv[1])
errors = []
RESTRICTED_NS = {"storelink", "storelink-cloud"}
VALID_WAVES = {"canary", "region", "all"}

def pod_spec(obj):
    k = obj.get("kind")
    spec = obj.get("spec") or {}
    if k == "Pod":
        return spec
    if k == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if k in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return spec.get("template", {}).get("spec")
    return None

def check_restricted(obj, where):
    name = f"{where}: {obj['kind']}/{obj['metadata']['name']}"
    ps = pod_spec(obj)
    if ps is None:
        return
    psc = ps.get("securityContext") or {}
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if ps.get(f):
            errors.append(f"{name}: {f}")
    for v in ps.get("volumes") or []:
        if "hostPath" in v:
            errors.append(f"{name}: hostPath volume {v['name']}")
    for c in (ps.get("initContainers") or []) + (ps.get("containers") or []):
        sc = c.get("securityContext") or {}
        cn = f"{name} container {c['name']}"
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            errors.append(f"{cn}: runAsNonRoot not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            errors.append(f"{cn}: runAsUser 0")
        if sc.get("privileged"):
            errors.append(f"{cn}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{cn}: allowPrivilegeEscalation not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{cn}: readOnlyRootFilesystem not true")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            errors.append(f"{cn}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            errors.append(f"{cn}: adds capabilities {caps['add']}")
        sp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if sp not in ("RuntimeDefault", "Localhost"):
            errors.append(f"{cn}: seccompProfile not RuntimeDefault")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                errors.append(f"{cn}: hostPort {p['hostPort']}")

renders = {}
for f in sorted(work.glob("k3s_*.yaml")):
    renders[f.name] = [d for d in yaml.safe_load_all(f.read_text()) if d]

def check_secret_access(obj, where):
    # A Secret's files belong to root; a non-root pod reads them only as
    # their group (fsGroup) or if the mode lets everyone (world-readable).
    ps = pod_spec(obj)
    if ps is None:
        return
    psc = ps.get("securityContext") or {}
    if psc.get("fsGroup") is not None or psc.get("runAsUser") in (None, 0):
        return
    for v in ps.get("volumes") or []:
        src = v.get("secret")
        if src is not None and not int(src.get("defaultMode", 0o644)) & 0o004:
            errors.append(f"{where}: {obj['kind']}/{obj['metadata']['name']}: secret volume "
                          f"{v['name']} (mode {int(src.get('defaultMode', 0o644)):o}) unreadable: "
                          f"runs as {psc.get('runAsUser')} without fsGroup")

# Argo CD applies only the kinds a project whitelists.
PROJECT_OF = {"k3s_cloud.yaml": "storelink-cloud",
              "k3s_system_serial-device-plugin.yaml": "storelink-system"}
projects = {d["metadata"]["name"]: d["spec"] for d in renders.get("k3s_fleet.yaml", [])
            if d.get("kind") == "AppProject"}
for fname, docs in renders.items():
    project = PROJECT_OF.get(fname) or ("storelink-stores" if "_stores_" in fname else None)
    if project is None:
        continue
    spec = projects.get(project)
    if spec is None:
        errors.append(f"{fname}: AppProject {project} not in k3s/fleet"); continue
    allowed = {(w.get("group", ""), w["kind"]) for w in
               (spec.get("namespaceResourceWhitelist") or []) + (spec.get("clusterResourceWhitelist") or [])}
    for d in docs:
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        if (group, d["kind"]) not in allowed:
            errors.append(f"{fname}: {d['kind']}/{d['metadata']['name']} ({group or 'core'}) "
                          f"is not whitelisted in AppProject {project}: Argo CD would refuse the sync")

n_workloads = 0
for fname, docs in renders.items():
    for d in docs:
        ns = d.get("metadata", {}).get("namespace")
        if d.get("kind") == "Namespace" and d["metadata"]["name"] in RESTRICTED_NS:
            if (d["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "restricted":
                errors.append(f"{fname}: Namespace {d['metadata']['name']} lacks pod-security.kubernetes.io/enforce=restricted")
        if ns in RESTRICTED_NS and pod_spec(d) is not None:
            n_workloads += 1
            check_restricted(d, fname)
        check_secret_access(d, fname)

# Stores.
stores = sorted(pathlib.Path("k3s/overlays/regions").glob("*/stores/*"))
seen = {}
for sd in stores:
    where = str(sd)
    region_dir, store_dir = sd.parent.parent.name, sd.name
    try:
        prof = tomllib.loads((sd / "store.toml").read_text())
        fleet = yaml.safe_load((sd / "fleet.yaml").read_text()) or {}
    except Exception as e:  # noqa: BLE001
        errors.append(f"{where}: {e}"); continue
    sid = prof.get("store", {}).get("id")
    if sid in seen:
        errors.append(f"{where}: store id {sid} also used by {seen[sid]}")
    seen[sid] = where
    if not (sid == store_dir == fleet.get("store")):
        errors.append(f"{where}: store id mismatch: dir {store_dir}, store.toml {sid}, fleet.yaml {fleet.get('store')}")
    if not (prof["store"].get("region") == region_dir == fleet.get("region")):
        errors.append(f"{where}: region mismatch: dir {region_dir}, store.toml {prof['store'].get('region')}, fleet.yaml {fleet.get('region')}")
    if fleet.get("wave") not in VALID_WAVES:
        errors.append(f"{where}: fleet.yaml wave {fleet.get('wave')!r} not one of {sorted(VALID_WAVES)}")
    docs = renders.get(str(sd).replace("/", "_") + ".yaml")
    if docs is None:
        errors.append(f"{where}: no render (kustomize failed?)"); continue
    for d in docs:
        if d.get("kind") != "Namespace" and d.get("metadata", {}).get("namespace") != "storelink":
            errors.append(f"{where}: {d['kind']}/{d['metadata']['name']} not in namespace storelink")
    dep = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "store-agent"]
    if len(dep) != 1:
        errors.append(f"{where}: expected one Deployment store-agent"); continue
    dep = dep[0]
    if dep["spec"].get("replicas") != 1 or dep["spec"].get("strategy", {}).get("type") != "Recreate":
        errors.append(f"{where}: store-agent must be 1 replica with strategy Recreate")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    serial = str((c.get("resources", {}).get("limits") or {}).get("squat.ai/serial", "0"))
    nscan = len(prof.get("scanners", []))
    if serial != str(nscan):
        errors.append(f"{where}: squat.ai/serial limit {serial} but {nscan} [[scanners]] in store.toml")
    cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("store-profile-")]
    if len(cms) != 1 or cms[0].get("data", {}).get("store.toml") != (sd / "store.toml").read_text():
        errors.append(f"{where}: rendered store-profile ConfigMap does not carry store.toml")

r = subprocess.run([sys.executable, "k3s/fleet/sync-windows.py", "--check"], capture_output=True, text=True)
if r.returncode != 0:
    errors.append((r.stderr or r.stdout).strip())

for e in errors:
    print("    " + e)
print(f"    policy: {n_workloads} restricted workloads, {len(stores)} stores checked, {len(errors)} problems")
sys.exit(1 if errors else 0)
PY
then
  pass "policy: restricted pod security, secret access, project whitelists, namespaces, store consistency, sync windows"
else
  fail "policy: see problems above"
fi

# --- 5. store-agent config check ---------------------------------------------
# The TLS files a profile names live on the store box (mounted Secrets), not
# in this checkout: check everything else about the profile here.
export STORELINK_CONFIG_CHECK_FILES=0
mapfile -t profiles < <(find k3s/overlays -name store.toml | sort)
if [ ! -x "$agent_bin" ]; then
  fail "profiles: store-agent binary not found at '$agent_bin' (build it with 'cargo build -p store-agent', or set STORE_AGENT_BIN)"
else
  bad=0
  for p in "${profiles[@]}"; do
    if ! out="$(timeout 60 "$agent_bin" config check "$p" 2>&1)"; then
      log "config check failed: $p"; printf '%s\n' "$out" | sed 's/^/    /'; bad=1
    fi
  done
  if [ "$bad" -eq 0 ]; then
    pass "profiles: ${#profiles[@]} store.toml pass '$agent_bin config check'"
  else
    fail "profiles: store-agent config check rejected some store.toml"
  fi
fi

echo
echo "check-fleet summary:"
printf '  %s\n' "${summary[@]}"
echo "check-fleet: $npass passed, $nfail failed"
exit "$failed"
