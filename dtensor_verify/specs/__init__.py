"""Specifications: VNN-LIB 1.0 properties and VNN-COMP counterexample / result files."""
from .counterexample import (VERDICTS, check_result_path, format_counterexample, parse_counterexample,
                             read_result_file, remove_result_file, violates, write_result_file)
from .vnnlib import (OutputDisjunct, Property, Region, VnnlibError, parse_vnnlib, read_vnnlib)

__all__ = ["VnnlibError", "OutputDisjunct", "Region", "Property", "read_vnnlib", "parse_vnnlib",
           "format_counterexample", "parse_counterexample", "write_result_file", "check_result_path",
           "remove_result_file",
           "read_result_file", "violates", "VERDICTS"]
