"""Parses every Terraform file with python-hcl2 (a syntax error fails here, where checkov would only
warn) and checks the wiring between modules, which `terraform validate` would do if providers
could be downloaded:
  - each call of a local module passes only variables the module declares,
  - and sets every variable that has no default,
  - and every `module.<call>.<output>` reference names an output the module declares.

Usage: terraform_modules.py TERRAFORM_DIR
"""

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hcl2

# Arguments of a module block that are Terraform's, not the module's variables.
META_ARGUMENTS = {"source", "version", "providers", "count", "for_each", "depends_on"}
MODULE_REFERENCE = re.compile(r"\bmodule\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")


@dataclass
class Directory:
    """What the files of one Terraform directory declare and call."""

    variables: dict = field(default_factory=dict)  # name -> has a default
    outputs: set = field(default_factory=set)
    calls: list = field(default_factory=list)  # (file, line, call name, body)
    expressions: list = field(default_factory=list)  # (file, every string value in the file)


def unwrap(value):
    """python-hcl2 wraps attribute values in one-element lists; take them out."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def load(directory: Path) -> Directory:
    found = Directory()
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            parsed = hcl2.load(f)
        for block in parsed.get("variable", []):
            for name, body in block.items():
                found.variables[name] = "default" in body
        for block in parsed.get("output", []):
            found.outputs.update(block)
        for block in parsed.get("module", []):
            for name, body in block.items():
                found.calls.append((path, body.get("__start_line__", "?"), name, body))
        found.expressions.append((path, list(strings(parsed))))
    return found


def main(root: str) -> int:
    root_dir = Path(root).resolve()
    directories = sorted({p.parent for p in root_dir.rglob("*.tf") if ".terraform" not in p.parts})
    parsed = {d: load(d) for d in directories}
    problems = []
    calls = 0
    for directory, found in parsed.items():
        sources = {}
        for path, line, name, body in found.calls:
            where = f"{path.relative_to(root_dir)}:{line}: module \"{name}\""
            source = unwrap(body.get("source"))
            if not isinstance(source, str) or not source.startswith((".", "/")):
                problems.append(f"{where}: source {source!r} is not a local module")
                continue
            module_dir = (directory / source).resolve()
            module = parsed.get(module_dir)
            if module is None:
                problems.append(f"{where}: no Terraform files in {source}")
                continue
            calls += 1
            sources[name] = module
            passed = {k for k in body if not k.startswith("__")} - META_ARGUMENTS
            for unknown in sorted(passed - module.variables.keys()):
                problems.append(f"{where}: passes `{unknown}`, which {source} does not declare")
            for missing in sorted(n for n, has_default in module.variables.items() if not has_default and n not in passed):
                problems.append(f"{where}: does not set `{missing}`, which {source} requires")
        for path, values in found.expressions:
            for value in values:
                for call, output in MODULE_REFERENCE.findall(value):
                    module = sources.get(call)
                    if module is None:
                        problems.append(f"{path.relative_to(root_dir)}: `module.{call}.{output}`: no module \"{call}\" here")
                    elif output not in module.outputs:
                        problems.append(f"{path.relative_to(root_dir)}: `module.{call}.{output}`: the module has no such output")
    files = sum(1 for _ in root_dir.rglob("*.tf"))
    for problem in problems:
        print(problem)
    print(f"terraform: {files} files parsed, {calls} module calls checked, {len(problems)} problems")
    return 1 if problems or calls == 0 else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
