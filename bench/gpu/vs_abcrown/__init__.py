"""dtensor-verify vs alpha,beta-CROWN side by side (`bench/gpu/bench_vs_abcrown.py` is its entry point).

One concern a module:

* `records`: the typed values passed between the stages (instances, outcomes, runs, options);
* `instances`: selecting the instances and staging their files;
* `configs`: alpha,beta-CROWN's released configs, made plain branch and bound;
* `verdicts`: counting (late verdicts, abcrown's status strings) and contradictions;
* `abcrown_output`: reading abcrown's batch-mode log lines;
* `run_ours`, `run_abcrown`: running each tool;
* `tool_csv`: the CSVs (a tool's verdicts, results.csv);
* `facts`, `report`: provenance and table.md;
* `cli`: the command line.
"""
