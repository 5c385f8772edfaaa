"""Shared constants of the project's tests."""

import re

#: Fast timing for tests whose subject is not the figures themselves.
FAST = ["--min-rounds=3", "--min-time=0.01", "--max-time=0.05"]


#: The JSON-schema keywords ``schema_violations`` checks; the schema test keeps the schema to them.
SCHEMA_KEYWORDS = {"description", "type", "enum", "const", "minimum", "items", "additionalProperties", "pattern"}


def schema_violations(info: dict) -> list[str]:
    """What in one benchmark's ``extra_info`` breaks ``case-result.schema.json``.

    jsonschema is not a dependency of the project; this checks the keywords the record's
    schema uses (``SCHEMA_KEYWORDS``: required keys, types, enum, const, minimum, items,
    nested objects) the way a JSON-schema validator reads them.
    """
    import json

    from infermatrix.results import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    json_types = {"string": (str,), "integer": (int,), "number": (int, float), "object": (dict,), "array": (list,),
                  "null": (type(None),), "boolean": (bool,)}

    def is_type(value: object, name: str) -> bool:
        if isinstance(value, bool) and name in ("integer", "number"):
            return False  # JSON's true is no number, though Python's bool is an int
        return isinstance(value, json_types[name])

    def check(value: object, rule: dict, where: str) -> list[str]:
        types = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
        if not any(is_type(value, t) for t in types):
            return [f"{where}={value!r} is not {' or '.join(types)}"]
        found = []
        if "enum" in rule and value not in rule["enum"]:
            found.append(f"{where}={value!r} not in {rule['enum']}")
        if "pattern" in rule and isinstance(value, str) and not re.search(rule["pattern"], value):
            found.append(f"{where}={value!r} does not match {rule['pattern']}")
        if "const" in rule and value != rule["const"]:
            found.append(f"{where}={value!r} != {rule['const']!r}")
        if "minimum" in rule and value is not None and value < rule["minimum"]:
            found.append(f"{where}={value!r} < {rule['minimum']}")
        if "items" in rule and isinstance(value, list):
            for i, item in enumerate(value):
                found += check(item, rule["items"], f"{where}[{i}]")
        if isinstance(rule.get("additionalProperties"), dict) and isinstance(value, dict):
            for key, item in value.items():
                found += check(item, rule["additionalProperties"], f"{where}.{key}")
        return found

    found = [f"missing required {key!r}" for key in schema["required"] if key not in info]
    for key, rule in schema["properties"].items():
        if key in info:
            found += check(info[key], rule, key)
    return found
