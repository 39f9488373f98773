"""The service configs Terraform writes onto instances (terraform/modules/services/configs/
<service>.toml.tftpl) are rendered with example values and passed to the real
`logpipe-<service> check --config`, so they cannot drift from what the services accept.

Usage: terraform_configs.py TEMPLATE_DIR BIN_DIR
"""

import re
import sys
import tempfile
from pathlib import Path

from service_check import check_config

# Example values for the template variables, shaped like what the module passes.
EXAMPLES = {
    "port": "8081",
    "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$UNR41+yZtSV5tjOppUb1QQ$MIqIUrWLPy0erqcUkGecfpvEdZnrh/MDrOonMDqrBpk",
    "name": "example",
    "source": "10.40.0.10:9092,10.40.16.10:9092,10.40.32.10:9092",
    "target": "10.40.0.20:9092,10.40.16.20:9092,10.40.32.20:9092",
    "bootstrap": "10.40.0.20:9092,10.40.16.20:9092,10.40.32.20:9092",
    "schema_store": "http://internal-example-schema-store.elb.eu-west-1.amazonaws.com:8081",
    "tables_uri": "s3://logpipe-example-lake/logpipe",
    "region": "eu-west-1",
}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def main(template_dir: str, bin_dir: str) -> int:
    failures = 0
    templates = sorted(Path(template_dir).glob("*.toml.tftpl"))
    for template in templates:
        service = template.name.removesuffix(".toml.tftpl")
        text = template.read_text()
        unknown = sorted(set(PLACEHOLDER.findall(text)) - EXAMPLES.keys())
        if unknown or "%{" in text:
            print(f"{template.name}: no example value for {unknown} (or a template directive): add one here")
            failures += 1
            continue
        rendered = PLACEHOLDER.sub(lambda m: EXAMPLES[m.group(1)], text)
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
            config.write(rendered)
            config.flush()
            if not check_config(bin_dir, f"logpipe-{service}", config.name, f"terraform {template.name}"):
                failures += 1
    if not templates:
        print(f"no *.toml.tftpl in {template_dir}")
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
