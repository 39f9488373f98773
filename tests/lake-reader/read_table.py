"""Reads a Delta table with an outside reader and prints what the lake tests compare.

Usage: read_table.py <deltalake|polars> <table uri>

Object store options (an S3 endpoint, region, credentials) come from the AWS_* environment
variables. Prints one JSON object: the table's row count, its columns, the id of every row
([lp_host, lp_file, lp_offset]), and per row id the values of the columns named in
LOGPIPE_LAKE_COLUMNS (comma separated). Each reader runs in its own process: polars and
deltalake in one process can abort at exit.
"""
import json
import os
import sys


def main() -> None:
    reader, uri = sys.argv[1], sys.argv[2]
    wanted = [c for c in os.environ.get("LOGPIPE_LAKE_COLUMNS", "").split(",") if c]
    storage = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    if reader == "deltalake":
        from deltalake import DeltaTable, QueryBuilder

        data = QueryBuilder().register("t", DeltaTable(uri, storage_options=storage)).execute("SELECT * FROM t").read_all()
        columns = data.column_names
        values = [data.column(c).to_pylist() for c in columns]
        rows = [dict(zip(columns, row)) for row in zip(*values)]
    elif reader == "polars":
        import polars as pl

        frame = pl.read_delta(uri, storage_options=storage)
        rows = frame.to_dicts()
        columns = frame.columns
    else:
        raise SystemExit(f"unknown reader {reader}")
    out = {
        "rows": len(rows),
        "columns": columns,
        "ids": [[r["lp_host"], r["lp_file"], r["lp_offset"]] for r in rows],
        "values": [{c: (None if r.get(c) is None else str(r.get(c))) for c in wanted} for r in rows],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
