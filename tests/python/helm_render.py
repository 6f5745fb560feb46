#!/usr/bin/env python3
"""Helm's own Go SDK (helm-python-sdk, `import helm_python`) driven from the
chart tests: lint, render and inspect a chart exactly as `helm` would,
offline. Prints one JSON document on stdout.

  helm_render.py lint CHART [VALUES...] [--namespace NS] [--kube-version V]
      `helm lint --strict`: {"total_charts_linted", "messages": [{"severity",
      "path", "error"}], "errors"}; severity 1 info, 2 warning, 3 error.

  helm_render.py render CHART [VALUES...] [--name NAME] [--namespace NS]
      `helm template`: {"manifests": {"<chart>/templates/<file>": "<yaml>"}}
      (NOTES.txt included, as Helm renders it). Values are checked against
      values.schema.json first.

  helm_render.py show CHART
      {"metadata": Chart.yaml, "values": the defaults, "crds": [{"name",
      "filename", "data"}], "has_schema": bool}

  helm_render.py batch < [[ARGS...], ...]
      Runs each argument list above in this one process (Helm's library
      loads once) and prints the list of their JSON documents.

VALUES, applied in order like repeated `helm -f` (maps merge, anything
else is replaced):
  --values FILE         a values file ("-" for stdin)
  --values-yaml TEXT    a values document given inline

On a Helm error: {"error": {"kind": "HelmValuesError", "message": "..."}}
and exit status 1 (in a batch, that document and status 0). Other
failures exit 2 with a message on stderr.
"""

import argparse
import json
import sys

import helm_python as helm


def merge(base, override):
    """Helm's -f merge: nested maps merge, other values replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(args):
    values = {}
    for kind, text in args.values:
        if kind == "file":
            if text == "-":
                text = sys.stdin.read()
            else:
                with open(text, encoding="utf-8") as f:
                    text = f.read()
        # Helm's own YAML reader, so values parse as they would for helm.
        values = merge(values, helm.values_from_yaml(text) or {})
    return values


class AppendValues(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        kind = "file" if option_string in ("--values", "-f") else "yaml"
        # A new list: the default one is shared by every parse in a batch.
        namespace.values = [*namespace.values, (kind, value)]


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("batch")
    for name in ("lint", "render", "show"):
        c = sub.add_parser(name)
        c.add_argument("chart")
        c.set_defaults(values=[])
        if name != "show":
            c.add_argument("--values", "-f", action=AppendValues, dest="values")
            c.add_argument("--values-yaml", action=AppendValues, dest="values")
            c.add_argument("--namespace", default="default")
        if name == "lint":
            c.add_argument("--kube-version")
        if name == "render":
            c.add_argument("--name", default="release-name")
    return p


def run(args):
    """One command; Helm errors become an {"error": ...} document."""
    try:
        if args.command == "lint":
            return helm.lint(
                args.chart,
                user_values(args),
                strict=True,
                namespace=args.namespace,
                kube_version=args.kube_version,
            )
        if args.command == "render":
            with helm.Chart.load(args.chart) as chart:
                manifests = chart.render(
                    user_values(args),
                    name=args.name,
                    namespace=args.namespace,
                    is_install=True,
                )
            return {"manifests": manifests}
        with helm.Chart.load(args.chart) as chart:
            return {
                "metadata": chart.metadata,
                "values": chart.values,
                "crds": chart.crds,
                "has_schema": chart.schema is not None,
            }
    except helm.HelmError as e:
        return {"error": {"kind": type(e).__name__, "message": str(e)}}


def main():
    p = parser()
    args = p.parse_args()
    try:
        if args.command == "batch":
            out = [run(p.parse_args(argv)) for argv in json.load(sys.stdin)]
            status = 0
        else:
            out = run(args)
            status = 1 if "error" in out else 0
    except OSError as e:
        print(f"helm_render.py: {e}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout)
    print()
    return status


if __name__ == "__main__":
    sys.exit(main())
