"""A ValidatingAdmissionPolicy evaluated offline, as the API server would for one object.

The expressions are Common Expression Language; cel-python (`celpy`, the test extra) evaluates the
standard language, which is all the project's policy uses (has, all, map, in, size, ternaries; none of
Kubernetes' extension libraries). Variables are evaluated in order, each seeing the earlier ones, and a
validation that is false or fails to evaluate denies the object (failurePolicy: Fail), which is what the
API server does. Not modelled: matchConditions, params, authorizer and the messageExpression field
(the project's policy uses none of them).
"""

from __future__ import annotations

from typing import Any

import celpy

Resource = dict[str, Any]
_ENV = celpy.Environment()


def _run(expression: str, activation: dict[str, Any]) -> Any:
    program = _ENV.program(_ENV.compile(expression))
    return program.evaluate(activation)


def denials(policy: Resource, obj: Resource) -> list[str]:
    """The message of every validation that denies `obj` (empty: admitted)."""
    activation: dict[str, Any] = {"object": celpy.json_to_cel(obj)}
    variables: dict[str, Any] = {}
    for variable in policy["spec"].get("variables", []):
        activation["variables"] = celpy.celtypes.MapType(variables)
        try:
            value = _run(variable["expression"], activation)
        except celpy.CELEvalError as exc:  # an expression that reads it fails, and so denies
            value = exc
        variables[celpy.celtypes.StringType(variable["name"])] = value
    activation["variables"] = celpy.celtypes.MapType(variables)
    denied = []
    for validation in policy["spec"]["validations"]:
        message = validation["message"]
        try:
            result = _run(validation["expression"], activation)
        except celpy.CELEvalError as exc:
            result = exc
        if isinstance(result, celpy.CELEvalError):
            denied.append(f"{message} (evaluation error: {result})")
        elif not isinstance(result, celpy.celtypes.BoolType):
            denied.append(f"{message} (not a bool: {result!r})")
        elif not result:
            denied.append(message)
    return denied
