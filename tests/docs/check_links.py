#!/usr/bin/python3
"""Every relative link in the repository's Markdown files names a file or
folder inside the repository (a clone has nothing outside it), and so does
every path the text quotes as code (`src/...`, `tests/...`): a file that
moved leaves no stale path behind.

usage: check_links.py REPOSITORY_ROOT
"""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(sys.argv[1])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# `src/core/x.cpp`, `tests/service/` (no spaces, wildcards or placeholders).
QUOTED_PATH = re.compile(r"`((?:src|tests|bench|scripts|clients|docs|proto|fuzz|examples)/[A-Za-z0-9_./-]*)`")


def markdown_files():
    listed = subprocess.run(["git", "-C", ROOT, "ls-files", "*.md"], capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        return [os.path.join(ROOT, path) for path in listed.stdout.split()]
    return [os.path.join(folder, name) for folder, _, names in os.walk(ROOT) for name in names
            if name.endswith(".md") and "/build/" not in folder]


def main():
    problems = []
    for path in markdown_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for number, line in enumerate(text.splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                    continue  # a URL or an anchor in the same file
                where = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
                inside = where == ROOT or where.startswith(ROOT + os.sep)
                if not inside:
                    problems.append(f"{os.path.relpath(path, ROOT)}:{number}: {target} points outside the repository")
                elif not os.path.exists(where):
                    problems.append(f"{os.path.relpath(path, ROOT)}:{number}: {target} does not exist")
    for path in markdown_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for number, line in enumerate(text.splitlines(), 1):
            for quoted in QUOTED_PATH.findall(line):
                # Relative to the repository's root, as the README writes them;
                # an upper-case segment is a placeholder (fuzz/regressions/TARGET/).
                if re.search(r"/[A-Z_]+(/|$)", quoted):
                    continue
                if not os.path.exists(os.path.join(ROOT, quoted)):
                    problems.append(f"{os.path.relpath(path, ROOT)}:{number}: `{quoted}` does not exist")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
