"""Run a dtensor-verify command and dump every thread's Python stack to a file every N seconds,
to see where a run that overruns its limit spends its time (a GPU-only overrun cannot be
profiled here).
    python3 bench/gpu/with_stacks.py STACKS_FILE EVERY_S dtensor-verify-args...
e.g. python3 bench/gpu/with_stacks.py $OUT/yolo_stacks.txt 20 --threads 1 run --onnx M --vnnlib S ...
"""
import faulthandler
import runpy
import sys

if __name__ == "__main__":
    out, every = sys.argv[1], float(sys.argv[2])
    faulthandler.dump_traceback_later(every, repeat=True, file=open(out, "w"))
    sys.argv = ["dtensor_verify"] + sys.argv[3:]
    runpy.run_module("dtensor_verify", run_name="__main__")
