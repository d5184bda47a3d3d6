"""The element types a VNN-LIB 2.0 query may declare here (no heavy imports: `supports` reads them).

float32 networks (bounds in float32 arithmetic, every counterexample replayed by onnxruntime in
float32) and `real` (permission to treat them as reals) for any variable; int32 / int64 for
outputs and hidden nodes that the file computes from float32 by casts and integer arithmetic
(`onnx_int_casts` rewrites them exactly, else the answer is unknown)."""

SOUND_ELEMENT_TYPES = ("float32", "real")
INTEGER_OUTPUT_TYPES = ("int32", "int64")
