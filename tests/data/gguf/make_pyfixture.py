"""Writes tests/data/gguf/gguf_py_fixture.gguf with gguf-py (llama.cpp's Python package), so the Rust
reader and writer can be checked against an implementation this project did not write.

Run from the crate root:  python3 tests/data/gguf/make_pyfixture.py
"""
import pathlib

import numpy as np
from gguf import GGUFWriter, GGUFValueType

out = pathlib.Path(__file__).with_name("gguf_py_fixture.gguf")
w = GGUFWriter(str(out), arch="fixture")  # adds general.architecture = "fixture"
w.add_uint8("t.u8", 200)
w.add_int8("t.i8", -100)
w.add_uint16("t.u16", 60000)
w.add_int16("t.i16", -30000)
w.add_uint32("t.u32", 4000000000)
w.add_int32("t.i32", -2000000000)
w.add_uint64("t.u64", 18446744073709551615)
w.add_int64("t.i64", -9223372036854775808)
w.add_float32("t.f32", 0.15625)
w.add_float64("t.f64", -1.0e-300)
w.add_bool("t.bool", True)
w.add_string("t.str", "h\u00e9llo \u2713")
w.add_array("t.a.u32", [1, 2, 3])
w.add_array("t.a.str", ["<s>", "", "\u00fcn\u00ef"])
w.add_array("t.a.f32", [0.5, -2.0])
w.add_array("t.a.bool", [True, False])
w.add_key_value("t.a.i16", [-1, 7], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT16)
w.add_array("t.nested", [[1, 2], ["x", "y"]])
w.add_tensor("w.f32", np.arange(12, dtype=np.float32).reshape(3, 4))  # ggml dims [4, 3]
w.add_tensor("w.f16", np.array([1.0, -0.5, 2.0], dtype=np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out, out.stat().st_size)
