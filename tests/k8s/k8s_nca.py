"""Ask network-config-analyzer (np-guard's `nca`) which connections the rendered NetworkPolicies allow.

NetworkPolicy semantics (policy types, peers that combine namespace and pod selectors, ipBlocks,
ports and protocols, pods that no policy selects) are easy to get wrong, and so is an evaluator
written beside the policies it checks. nca is a maintained analyzer that reads policies, pods and
namespaces from files and needs no cluster. The tests build a *world* for each supported install
topology (the project's pods as rendered, plus Kubeflow Pipelines, DNS, Prometheus and user pods
modelled as Pods and Namespaces), run `nca --connectivity` over it, and read the per-pair map
(`--output_format txt_no_fw_rules`: one `SRC => DST : CONNECTIONS` line per pair that may connect).

Only the rendered NetworkPolicies are given to nca as policies; everything else is given as
resources, so that nca sees exactly the pods and namespaces modelled here.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from k8s_render import REPO_ROOT, Resource, all_pod_templates, render

# one line of the map: "ns/name[Pod] => 0.0.0.0-255.255.255.255 : {protocols:TCP,dst_ports:443}"
_LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conns>.+)$")
_CUBE = re.compile(r"\{([^{}]*)\}")
_DIMENSION = re.compile(r"(\w+):")


def nca() -> str | None:
    """The nca command beside this interpreter (the test extra installs it), else one on PATH."""
    return shutil.which("nca", path=str(Path(sys.executable).parent)) or shutil.which("nca")


@dataclass(frozen=True)
class Pod:
    """A pod the analyzer should know about: where it runs and the labels policies select it by."""

    namespace: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """How nca names this pod in its connectivity map."""
        return f"{self.namespace}/{self.name}[Pod]"

    def manifest(self) -> Resource:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(self.labels)},
                "spec": {"containers": [{"name": "main", "image": "modelled"}]}}


def namespace_manifest(name: str, labels: dict[str, str] | None = None) -> Resource:
    """A Namespace with the `kubernetes.io/metadata.name` label the API server sets on every namespace."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {**(labels or {}), "kubernetes.io/metadata.name": name}}}


def pods_of(resources: list[Resource], namespace: str) -> dict[str, Pod]:
    """One modelled Pod per pod template of the rendered workloads, named after the workload (and role)."""
    pods: dict[str, Pod] = {}
    for where, template in all_pod_templates(resources):
        name = where.split("/", 1)[1].replace("[", "-").replace("]", "").lower()
        pods[name] = Pod(namespace, name, template["metadata"].get("labels", {}))
    return pods


def namespace_replacements() -> list[Resource]:
    """The `replacements` every overlay that sets a namespace carries (k8s/overlays/dev says why)."""
    dev = yaml.safe_load((REPO_ROOT / "k8s" / "overlays" / "dev" / "kustomization.yaml").read_text())
    return dev["replacements"]


def render_in_namespace(kustomization: Path, namespace: str, workdir: Path, *, install: bool = True
                        ) -> list[Resource]:
    """Render `kustomization` as an operator's overlay on top of it that sets `namespace` would.

    The standalone-KFP install is exactly that: an overlay with `namespace: kubeflow` over dev or prod-gpu.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(kustomization, workdir)  # kustomize refuses absolute resource paths
    overlay = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
               "namespace": namespace, "resources": [relative]}
    if install:  # an install overlay carries the replacements (a launch template has no Namespace to read)
        overlay["replacements"] = namespace_replacements()
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return render(workdir)


@dataclass(frozen=True)
class Connectivity:
    """nca's connectivity map: for each (source, destination) pair that may connect, what it may open."""

    pairs: dict[tuple[str, str], str]
    report: str  # nca's output as printed

    def connections(self, src: str, dst: str) -> str:
        """nca's text for src -> dst ('No connections' when the pair is absent from the map).

        `dst` may be an IP address: the pair whose destination range holds it is looked up.
        """
        if (src, dst) in self.pairs:
            return self.pairs[src, dst]
        address = _address(dst)
        if address is not None:
            for (s, d), conns in self.pairs.items():
                if s == src and _range_holds(d, address):
                    return conns
        return "No connections"

    def allows(self, src: str, dst: str, port: int, protocol: str = "TCP") -> bool:
        return connections_allow(self.connections(src, dst), port, protocol)

    def endpoints(self) -> set[str]:
        return {e for pair in self.pairs for e in pair}


def connections_allow(text: str, port: int, protocol: str = "TCP") -> bool:
    """Whether nca's description of a pair's connections (e.g. '{protocols:TCP, UDP,dst_ports:53}') covers
    `protocol` to `port`. Grammar: 'All connections' | 'No connections' | 'All but ' CUBES | CUBES, where
    CUBES is a comma-joined list of '{dimension:values,...}' and a dimension that is left out allows all."""
    text = text.strip()
    if text == "All connections":
        return True
    if text == "No connections":
        return False
    if text.startswith("All but "):
        return not connections_allow(text[len("All but "):], port, protocol)
    cubes = _CUBE.findall(text)
    if not cubes:
        raise ValueError(f"unexpected connection text from nca: {text!r}")
    return any(_cube_allows(cube, port, protocol) for cube in cubes)


def _cube_allows(cube: str, port: int, protocol: str) -> bool:
    parts = _DIMENSION.split(cube)[1:]  # [dimension, values, dimension, values, ...]
    dims = {parts[i]: parts[i + 1].strip().rstrip(",") for i in range(0, len(parts), 2)}
    unknown = set(dims) - {"protocols", "dst_ports", "src_ports"}
    if unknown:
        raise ValueError(f"nca described connections by {sorted(unknown)}, which this reader does not know: {cube!r}")
    if "protocols" in dims and protocol not in {p.strip() for p in dims["protocols"].split(",")}:
        return False
    if "src_ports" in dims:  # NetworkPolicy never restricts source ports: a partial set is not "allowed"
        return False
    return "dst_ports" not in dims or _in_ranges(port, dims["dst_ports"])


def _in_ranges(port: int, ranges: str) -> bool:
    for item in ranges.split(","):
        low, _, high = item.strip().partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _range_holds(endpoint: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """nca names ipBlock endpoints as ranges 'first-last' (several joined by ',' when split)."""
    for item in endpoint.split(","):
        first, _, last = item.partition("-")
        low, high = _address(first), _address(last or first)
        if low is not None and high is not None and low.version == address.version and low <= address <= high:
            return True
    return False


def parse_map(report: str) -> dict[tuple[str, str], str]:
    """The `SRC => DST : CONNECTIONS` lines of nca's txt_no_fw_rules output."""
    pairs: dict[tuple[str, str], str] = {}
    for line in report.splitlines():
        match = _LINE.match(line.strip())
        if match:
            pairs[match["src"], match["dst"]] = match["conns"]
    return pairs


def _run(query: str, policies: list[Resource], world: list[Resource], workdir: Path,
         *extra: str) -> subprocess.CompletedProcess[str]:
    """`nca --<query> POLICIES --resource_list WORLD ...` with both written as YAML files under `workdir`."""
    exe = nca()
    if exe is None:
        raise RuntimeError("nca not found: install the test extra (network-config-analyzer)")
    bad = [r["kind"] for r in policies if r["kind"] != "NetworkPolicy"]
    if bad:
        raise ValueError(f"only NetworkPolicies are analysed as policies, got {bad}")
    workdir.mkdir(parents=True, exist_ok=True)
    policy_file, world_file = workdir / "policies.yaml", workdir / "world.yaml"
    policy_file.write_text(yaml.safe_dump_all(policies, sort_keys=False))
    world_file.write_text(yaml.safe_dump_all(world, sort_keys=False))
    command = [exe, f"--{query}", str(policy_file), "--resource_list", str(world_file), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)


def analyze(policies: list[Resource], world: list[Resource], workdir: Path) -> Connectivity:
    """Run `nca --connectivity` with `policies` (NetworkPolicies only) over the pods and namespaces in
    `world`; raises RuntimeError with nca's output when it fails or prints no map."""
    done = _run("connectivity", policies, world, workdir, "--output_format", "txt_no_fw_rules")
    pairs = parse_map(done.stdout)
    if done.returncode != 0 or not pairs:
        raise RuntimeError(f"nca failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return Connectivity(pairs, done.stdout)


def sanity(policies: list[Resource], world: list[Resource], workdir: Path) -> list[str]:
    """nca's sanity query (redundant policies and rules, selectors that select nothing or everything):
    its findings about the policies as lines, empty when the policies passed without a warning."""
    done = _run("sanity", policies, world, workdir)
    passed = "passed sanity check" in done.stdout
    findings = [line.strip() for line in (done.stdout + done.stderr).splitlines()
                if "policies.yaml" in line and ("Warning" in line or "Error" in line or "redundant" in line.lower())]
    if not passed and not findings:
        findings = [f"nca --sanity did not pass (exit {done.returncode}):", done.stdout, done.stderr]
    return findings

