#!/usr/bin/env python3
"""Parses the OpenMetrics text of ringmq's /metrics (read from stdin) with
Prometheus's own Python parser and prints one line per sample,
`name{label="value",...} value`, labels sorted, so tests/e2e_operations.rs
checks what Prometheus would read, not what a hand-written parser thinks.
Exits non-zero if the text does not parse."""

import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    text = sys.stdin.read()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            print(f"{sample.name}{{{labels}}} {sample.value:g}")


if __name__ == "__main__":
    main()
