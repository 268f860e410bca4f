"""Every service account has exactly the rights docs/operations.md's table gives it, and no more.

The table ("Service accounts and RBAC") is the one source: an operator reads it, this test parses it and
compares it with what the rendered overlays grant through every Role, ClusterRole, RoleBinding and
ClusterRoleBinding. A right added to a manifest without the table (or the reverse), an account that is
missing from it, a wildcard, or a binding to a role that does not exist fails here."""

from __future__ import annotations

import re

import pytest
from k8s_render import INSTALLS, REPO_ROOT, Resource, find

GUIDE = REPO_ROOT / "docs" / "operations.md"
HEADING = "## Service accounts and RBAC"
Right = tuple[str, str, str]  # (API group, resource, verb); "" is the core group


def parse_rights(cell: str) -> frozenset[Right]:
    """`kubeflow.org/pytorchjobs: create, get; configmaps: create` or `none`; raises ValueError otherwise."""
    cell = cell.strip()
    if cell == "none":
        return frozenset()
    rights: set[Right] = set()
    for rule in cell.split(";"):
        match = re.fullmatch(r"\s*(?:([a-z0-9.-]+)/)?([a-z0-9/]+):\s*([a-z]+(?:,\s*[a-z]+)*)\s*", rule)
        if not match:
            raise ValueError(f"cannot read the rule {rule.strip()!r} (group/resource: verb, verb)")
        group, resource, verbs = match[1] or "", match[2], match[3]
        rights |= {(group, resource, verb.strip()) for verb in verbs.split(",")}
    return frozenset(rights)


def documented() -> dict[str, frozenset[Right]]:
    """Service account name -> rights, from the guide's table."""
    text = GUIDE.read_text()
    assert HEADING in text, f"docs/operations.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    table: dict[str, frozenset[Right]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4 or cells[0] in {"service account", "---"}:
            continue
        name = re.match(r"`([a-z0-9-]+)`", cells[0])
        assert name, f"no `service-account` in the row {line!r}"
        table[name[1]] = parse_rights(cells[1])
    assert table, "the RBAC table has no rows"
    return table


def granted(resources: list[Resource]) -> dict[str, frozenset[Right]]:
    """Service account name -> every (group, resource, verb) the rendered bindings give it."""
    roles = {(r["kind"], r["metadata"]["name"]): r for r in find(resources, "Role") + find(resources, "ClusterRole")}
    rights: dict[str, set[Right]] = {sa["metadata"]["name"]: set() for sa in find(resources, "ServiceAccount")}
    for binding in find(resources, "RoleBinding") + find(resources, "ClusterRoleBinding"):
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], ref["name"]))
        assert role is not None, f"{binding['kind']}/{binding['metadata']['name']} binds a missing {ref['kind']}"
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", f"{binding['metadata']['name']} binds a {subject['kind']}"
            target = rights.setdefault(subject["name"], set())
            for rule in role["rules"]:
                assert "resourceNames" not in rule and "nonResourceURLs" not in rule, ref["name"]
                target |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return {name: frozenset(r) for name, r in rights.items()}


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_every_account_has_exactly_the_documented_rights(rendered, env: str) -> None:
    table, actual = documented(), granted(rendered[env] + rendered[f"{env}/pretrain"])
    assert set(actual) == set(table), f"accounts in the manifests {sorted(actual)} != the table {sorted(table)}"
    for name, rights in actual.items():
        assert not any("*" in part for right in rights for part in right), f"{name} has a wildcard: {sorted(rights)}"
        assert rights == table[name], (f"{env}: {name} is granted {sorted(rights)}, docs/operations.md says "
                                       f"{sorted(table[name])}")


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_accounts_without_rights_mount_no_token(rendered, env: str) -> None:
    table = documented()
    for account in find(rendered[env], "ServiceAccount"):
        name = account["metadata"]["name"]
        if not table[name]:
            assert account.get("automountServiceAccountToken") is False, name


def test_a_right_the_table_does_not_name_is_found(rendered) -> None:
    """The comparison above sees a verb added to a Role (a wider grant than the flow needs)."""
    resources = [dict(r) for r in rendered["prod-gpu"]]
    (role,) = find(resources, "Role")
    wider = {**role, "rules": [*role["rules"], {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    resources[resources.index(role)] = wider
    assert ("", "secrets", "get") in granted(resources)["pipeline-runner"] - documented()["pipeline-runner"]


@pytest.mark.parametrize("cell", ["all", "pytorchjobs create", "kubeflow.org/pytorchjobs: Create", ""])
def test_an_unreadable_rights_cell_is_an_error(cell: str) -> None:
    with pytest.raises(ValueError, match="cannot read the rule"):
        parse_rights(cell)
