#!/usr/bin/python3
"""Static checks of the Dockerfile, for a machine without a container engine
(and Debian 12 packages no Dockerfile linter).

usage: lint_dockerfile.py DOCKERFILE COMPOSE_FILE

Checks what would otherwise only fail at `docker build` time, or silently:
  - every instruction is one Docker knows; the file starts with FROM (or ARG);
  - COPY sources exist in the build context; COPY --from names an earlier stage;
  - ENTRYPOINT, CMD and HEALTHCHECK CMD use the exec (JSON array) form, so
    signals reach the process;
  - apt-get install uses --no-install-recommends and the layer removes
    /var/lib/apt/lists and the downloaded packages (apt-get clean); every package it names exists in Debian 12 (apt-cache);
  - the final stage runs as a non-root USER;
  - every build target docker-compose.yml names is a stage here.
Prints each problem with its line number; exits 1 if there is any.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import yaml

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def instructions(path):
    """(line number, keyword, arguments), with continuation lines joined."""
    pending, start = "", 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if pending and stripped.startswith("#"):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = pending + stripped
            pending = ""
            keyword, _, rest = text.partition(" ")
            yield start, keyword.upper(), rest.strip()


_known_packages = None


def package_exists(name):
    global _known_packages
    if _known_packages is None:  # one apt-cache run: each costs about a second
        names = subprocess.run(["apt-cache", "pkgnames"], stdout=subprocess.PIPE, text=True, check=True).stdout
        _known_packages = set(names.split())
    return name in _known_packages


def main():
    dockerfile, compose_file = sys.argv[1], sys.argv[2]
    context = os.path.dirname(os.path.abspath(dockerfile))
    problems = []
    stages, user_of_stage = [], {}
    first = True
    for number, keyword, rest in instructions(dockerfile):
        where = f"{os.path.basename(dockerfile)}:{number}"
        if keyword not in INSTRUCTIONS:
            problems.append(f"{where}: unknown instruction {keyword}")
            continue
        if first and keyword not in ("FROM", "ARG"):
            problems.append(f"{where}: the first instruction must be FROM, not {keyword}")
        first = False
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            stages.append(name)
            user_of_stage[name] = "root"
        elif keyword == "USER":
            user_of_stage[stages[-1]] = rest.split(":")[0]
        elif keyword in ("COPY", "ADD"):
            words = shlex.split(rest)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if source_stage is not None:
                if source_stage not in stages[:-1]:
                    problems.append(f"{where}: COPY --from={source_stage} names no earlier stage")
            else:
                for source in paths[:-1]:
                    if not os.path.exists(os.path.join(context, source)):
                        problems.append(f"{where}: COPY source {source} is not in the build context")
        elif keyword in ("ENTRYPOINT", "CMD") or (keyword == "HEALTHCHECK" and " CMD " in f" {rest} "):
            form = rest if keyword != "HEALTHCHECK" else rest[rest.index("CMD") + 3:].strip()
            try:
                if not isinstance(json.loads(form), list):
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: {keyword} should use the exec form [\"program\", \"arg\"]")
        elif keyword == "RUN" and "apt-get install" in rest:
            if "--no-install-recommends" not in rest:
                problems.append(f"{where}: apt-get install without --no-install-recommends")
            if "rm -rf /var/lib/apt/lists" not in rest:
                problems.append(f"{where}: the apt layer keeps /var/lib/apt/lists (rm -rf it)")
            # A base without the official images' docker-clean hook keeps
            # every downloaded .deb in the layer (85 MB seen here).
            if "apt-get clean" not in rest:
                problems.append(f"{where}: the apt layer keeps downloaded packages (apt-get clean)")
            for command in re.split(r"&&|;", rest):
                words = command.split()
                if "install" not in words or "apt-get" not in words:
                    continue
                for package in words[words.index("install") + 1:]:
                    if not package.startswith("-") and not package_exists(package):
                        problems.append(f"{where}: no Debian package named {package}")
    if not stages:
        problems.append("no FROM: not a Dockerfile")
    elif user_of_stage[stages[-1]] in ("root", "0"):
        problems.append(f"the final stage ({stages[-1]}) runs as root: add a USER")

    with open(compose_file) as f:
        compose = yaml.safe_load(f)
    for name, service in compose.get("services", {}).items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("target") and build["target"] not in stages:
            problems.append(f"compose service {name}: build target {build['target']} is no stage of the Dockerfile")

    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(stages)} stages, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
