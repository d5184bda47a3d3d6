"""Per-layer plans: ordered rules from layer-name / layer-type globs to policies.

Like `parallelize_module`'s plan dict, the first matching rule wins and `*` is the default.
Accepted forms:
  * a policy name:                     "fsdp"
  * a rule string:                     "fc1,fc2=tp;conv*=fsdp;*=replicate"
  * a file (one rule per line, '#' comments), given as "@path" or a path that exists
  * a Python dict / list of pairs:     {"gemm_1": "tp", "*": "fsdp"}
Patterns are shell-style globs (`*`, `?`, `[...]`) matched case-insensitively against a layer's
module name (e.g. `Gemm_1`, `Conv_0`) or its type (e.g. `Linear`, `Conv2d`): `conv*` matches both
the layer `Conv_0` and every `Conv2d`.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from dtensor_verify.errors import PlanError

from .styles import PlacementStyle as Policy
from .styles import get_style as get_policy


@dataclass
class Rule:
    patterns: tuple[str, ...]
    policy: Policy
    used: bool = False

    def matches(self, layer: str, layer_type: str | None) -> bool:
        names = [layer.lower()] + ([layer_type.lower()] if layer_type else [])
        return any(fnmatch.fnmatchcase(name, p.lower()) for p in self.patterns for name in names)

    def __str__(self):
        return f"{','.join(self.patterns)}={self.policy.name}"


@dataclass
class Plan:
    rules: list[Rule] = field(default_factory=list)
    source: str = "replicate"

    def policy_for(self, layer: str, layer_type: str | None) -> Policy:
        for rule in self.rules:
            if rule.matches(layer, layer_type):
                rule.used = True
                return rule.policy
        return get_policy("replicate")

    @property
    def default(self) -> Policy:
        for rule in self.rules:
            if "*" in rule.patterns:
                return rule.policy
        return get_policy("replicate")

    def __str__(self):
        return ";".join(str(r) for r in self.rules)


def _parse_rules(text: str, where: str) -> list[Rule]:
    rules = []
    chunks = [c for line in text.splitlines() for c in line.split("#", 1)[0].split(";")]
    for lineno, chunk in enumerate(chunks, 1):
        chunk = chunk.strip()
        if not chunk:
            continue
        if "=" not in chunk:
            if not rules and len([c for c in chunks if c.strip()]) == 1:
                return [Rule(("*",), get_policy(chunk))]   # a bare policy name
            raise PlanError(f"{where}: rule '{chunk}' has no '=' (expected 'pattern[,pattern]=policy')")
        lhs, rhs = chunk.split("=", 1)
        patterns = tuple(p.strip() for p in lhs.split(",") if p.strip())
        if not patterns:
            raise PlanError(f"{where}: rule '{chunk}' names no layer pattern")
        try:
            rules.append(Rule(patterns, get_policy(rhs)))
        except PlanError as exc:
            raise PlanError(f"{where}: rule '{chunk}': {exc}") from None
    if not rules:
        raise PlanError(f"{where}: empty plan")
    return rules


def parse_plan(spec) -> Plan:
    """Build a Plan from a string, a file, a dict or a list of (pattern, policy) pairs."""
    if spec is None:
        return Plan([Rule(("*",), get_policy("replicate"))], "replicate")
    if isinstance(spec, Plan):
        return spec
    if isinstance(spec, dict):
        spec = list(spec.items())
    if isinstance(spec, (list, tuple)):
        rules = []
        for pattern, policy in spec:
            pats = (pattern,) if isinstance(pattern, str) else tuple(pattern)
            rules.append(Rule(pats, policy if isinstance(policy, Policy) else get_policy(policy)))
        return Plan(rules, repr(spec))
    text = str(spec).strip()
    path = text[1:] if text.startswith("@") else text
    if text.startswith("@") or (os.path.sep in path or path.endswith((".plan", ".txt"))) and os.path.exists(path):
        try:
            with open(path) as fh:
                return Plan(_parse_rules(fh.read(), path), path)
        except OSError as exc:
            raise PlanError(f"{path}: cannot read plan file: {exc.strerror}") from None
    return Plan(_parse_rules(text, "--plan"), text)
