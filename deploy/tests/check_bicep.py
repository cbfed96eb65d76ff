"""Static checks of the Bicep templates without the Bicep compiler (which
needs the .NET-based `bicep` binary, not installable from the package
registries). Run with a Python that has pycep-parser (checkov's Bicep
parser): deploy/check.sh uses its own virtualenv.

    python check_bicep.py deploy/azure

1. Every .bicep file parses (pycep-parser's grammar): a syntax error fails.
2. Every module reference points at an existing file, passes only
   parameters that module declares and every parameter it requires.
3. Every loadTextContent()/loadFileAsBase64() file exists.
4. Every .bicepparam file (which pycep cannot parse) names an existing
   template in `using`, sets only declared parameters, sets every required
   one, with a literal of the declared type within @minValue/@maxValue.

What it cannot check (types of expressions, resource API schemas, ARM
limits) needs `az bicep build` and `az deployment group what-if`
(deploy/azure/README.md).
"""

import pathlib
import re
import sys

from pycep import BicepParser

PARSER = BicepParser()


def fail(errors, path, message):
    errors.append(f"{path}: {message}")


def parse_all(root, errors):
    parsed = {}
    for path in sorted(root.rglob("*.bicep")):
        try:
            parsed[path.resolve()] = PARSER.parse(file_path=path)
        except Exception as e:  # lark raises several exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fail(errors, path, f"does not parse: {type(e).__name__}: {first}")
    return parsed


def required(params):
    return {name for name, p in params.items() if p.get("default") is None}


def check_modules(parsed, errors):
    for path, doc in parsed.items():
        for name, module in (doc.get("modules") or {}).items():
            target = (path.parent / module["detail"]["path"]).resolve()
            if target not in parsed:
                fail(errors, path, f"module {name}: {module['detail']['path']} missing or unparsed")
                continue
            config = module["config"]
            config = config.get("config", config)  # conditional modules nest once more
            given = set((config.get("params") or {}).keys())
            declared = parsed[target].get("parameters") or {}
            for extra in sorted(given - set(declared)):
                fail(errors, path, f"module {name} passes {extra}, which {target.name} does not declare")
            for missing in sorted(required(declared) - given):
                fail(errors, path, f"module {name} does not pass {missing}, which {target.name} requires")
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"load(?:TextContent|FileAsBase64)\('([^']+)'\)", text):
            if not (path.parent / match.group(1)).is_file():
                fail(errors, path, f"{match.group(0)}: no such file")


LITERAL = re.compile(r"^(?:'(?P<s>(?:[^'\\]|\\.)*)'|(?P<i>-?\d+)|(?P<b>true|false))$")


def check_bicepparam(path, parsed, errors):
    lines = path.read_text(encoding="utf-8").splitlines()
    code = [(n, l.strip()) for n, l in enumerate(lines, 1) if l.strip() and not l.strip().startswith("//")]
    if not code or not code[0][1].startswith("using "):
        fail(errors, path, "first statement must be `using 'TEMPLATE.bicep'`")
        return
    target = (path.parent / code[0][1].split("'")[1]).resolve()
    if target not in parsed:
        fail(errors, path, f"using {target.name}: missing or unparsed")
        return
    declared = parsed[target].get("parameters") or {}
    given = set()
    for n, line in code[1:]:
        m = re.match(r"^param\s+(\w+)\s*=\s*(.+)$", line)
        if not m:
            fail(errors, path, f"line {n}: not `param NAME = VALUE`: {line}")
            continue
        name, value = m.group(1), m.group(2).strip()
        given.add(name)
        if name not in declared:
            fail(errors, path, f"line {n}: {name} is not a parameter of {target.name}")
            continue
        lit = LITERAL.match(value)
        kind = declared[name].get("type")
        if not lit:
            fail(errors, path, f"line {n}: {name}: only literal values are checked, got {value}")
            continue
        actual = "string" if lit.group("s") is not None else "int" if lit.group("i") else "bool"
        if actual != kind:
            fail(errors, path, f"line {n}: {name} is {kind}, given {actual}")
            continue
        if actual == "int":
            v = int(lit.group("i"))
            for d in declared[name].get("decorators") or []:
                if d["type"] == "min_value" and v < d["argument"]:
                    fail(errors, path, f"line {n}: {name} = {v} is below @minValue({d['argument']})")
                if d["type"] == "max_value" and v > d["argument"]:
                    fail(errors, path, f"line {n}: {name} = {v} is above @maxValue({d['argument']})")
    for missing in sorted(required(declared) - given):
        fail(errors, path, f"does not set {missing}, which {target.name} requires")


def main(argv):
    root = pathlib.Path(argv[1] if len(argv) > 1 else "deploy/azure")
    errors = []
    parsed = parse_all(root, errors)
    check_modules(parsed, errors)
    params = sorted(root.rglob("*.bicepparam"))
    for path in params:
        check_bicepparam(path, parsed, errors)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"bicep: {len(parsed)} templates parsed, {len(params)} parameter files, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
