"""Parses an OpenMetrics exposition from stdin with the official Prometheus client's strict
parser and prints every sample as JSON: {"name{label=value,...}": value}.

Exits non-zero (with the parser's message) when the exposition is not valid OpenMetrics.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    json.dump(samples, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
