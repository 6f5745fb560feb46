#!/usr/bin/env python3
"""Parses a metrics exposition with the official Prometheus Python client.

  parse_metrics.py classic|openmetrics < exposition

Prints one JSON object: {"samples": {"name{labels}": value, ...},
"families": {"name": "type"}}. Exits non-zero if the text does not parse.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_classic


def main():
    fmt = sys.argv[1]
    text = sys.stdin.read()
    parse = parse_om if fmt == "openmetrics" else parse_classic
    samples, families = {}, {}
    for family in parse(text):
        families[family.name] = family.type
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    print(json.dumps({"samples": samples, "families": families}))


if __name__ == "__main__":
    main()
