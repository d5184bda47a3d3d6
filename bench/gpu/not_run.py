"""The instances of QUEUE_CSV with no row in RESULTS_CSV (input_bab_gpu.sh's all_results.csv), in
QUEUE_CSV's order: what a next call still has to run.
    python3 bench/gpu/not_run.py RESULTS_CSV QUEUE_CSV > LEFT.csv"""
import csv
import sys

done = {(r["onnx"].strip(), r["vnnlib"].strip()) for r in csv.DictReader(open(sys.argv[1]))}
for line in open(sys.argv[2]):
    parts = [p.strip() for p in line.strip().split(",")]
    if len(parts) >= 2 and (parts[0], parts[1]) not in done:
        print(",".join(parts))
