//! Tests of the GGUF reader and writer: the real model (facts checked independently with gguf-py),
//! writer → reader round trips, and a corpus of malformed files built byte by byte here (with a tiny
//! independent encoder, not with the writer under test), each of which must be refused with an
//! `Error::Format` / `Error::Unsupported` and never a panic.

mod common;
use common::f32_bytes;
use std::borrow::Cow;
use std::path::PathBuf;

use edge_run::gguf::{describe_value, Gguf, GgufWriter, MetaArray, MetaValue, Value, ValueType};
use edge_run::kernels::QuantType;
use edge_run::Error;

// ---------------------------------------------------------------------------------------------
// An independent little GGUF encoder with named marks, for building valid and corrupt files.

#[derive(Default, Clone)]
struct Raw {
    b: Vec<u8>,
    marks: Vec<(String, usize)>,
}

impl Raw {
    fn mark(&mut self, name: &str) {
        self.marks.push((name.to_string(), self.b.len()));
    }
    fn at(&self, name: &str) -> usize {
        self.marks
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no mark {name}"))
            .1
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.b.extend_from_slice(v);
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }
    fn pad_to(&mut self, align: usize) {
        while !self.b.len().is_multiple_of(align) {
            self.b.push(0);
        }
    }
    /// A copy of the bytes with a little-endian u64 written at `pos`.
    fn with_u64(&self, pos: usize, v: u64) -> Vec<u8> {
        let mut b = self.b.clone();
        b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
        b
    }
    fn with_u32(&self, pos: usize, v: u32) -> Vec<u8> {
        let mut b = self.b.clone();
        b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
        b
    }
}

/// Value encodings (type id, payload).
fn v_str(s: &[u8]) -> (u32, Vec<u8>) {
    let mut r = Raw::default();
    r.str(s);
    (8, r.b)
}
fn v_u32(x: u32) -> (u32, Vec<u8>) {
    (4, x.to_le_bytes().to_vec())
}
/// An array: element type, declared count, raw element bytes.
fn v_arr(elem: u32, count: u64, payload: &[u8]) -> (u32, Vec<u8>) {
    let mut r = Raw::default();
    r.u32(elem).u64(count).bytes(payload);
    (9, r.b)
}
fn strs(items: &[&[u8]]) -> Vec<u8> {
    let mut r = Raw::default();
    for s in items {
        r.str(s);
    }
    r.b
}

struct Ti<'s> {
    name: &'s [u8],
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

/// The tensor info of `name`: its `dims`, GGML type `ty` and data `offset`.
fn ti<'s>(name: &'s [u8], dims: &[u64], ty: u32, offset: u64) -> Ti<'s> {
    Ti {
        name,
        dims: dims.to_vec(),
        ty,
        offset,
    }
}

/// GGUF v3 with the given metadata and tensor infos, padded to `align`, then `data_len` bytes of data
/// (byte i = i mod 251). Marks: `tensor_count`, `kv_count`, `kvI.key`, `kvI.type`, `kvI.val`,
/// `tiI.name`, `tiI.n_dims`, `tiI.dims`, `tiI.type`, `tiI.offset`, `data`.
type Kv<'k> = (&'k [u8], (u32, Vec<u8>));

fn build(kvs: &[Kv], tis: &[Ti], align: usize, data_len: usize) -> Raw {
    let mut r = Raw::default();
    r.bytes(b"GGUF").u32(3);
    r.mark("tensor_count");
    r.u64(tis.len() as u64);
    r.mark("kv_count");
    r.u64(kvs.len() as u64);
    for (i, (k, (ty, val))) in kvs.iter().enumerate() {
        r.mark(&format!("kv{i}.key"));
        r.str(k);
        r.mark(&format!("kv{i}.type"));
        r.u32(*ty);
        r.mark(&format!("kv{i}.val"));
        r.bytes(val);
    }
    for (i, t) in tis.iter().enumerate() {
        r.mark(&format!("ti{i}.name"));
        r.str(t.name);
        r.mark(&format!("ti{i}.n_dims"));
        r.u32(t.dims.len() as u32);
        r.mark(&format!("ti{i}.dims"));
        for &d in &t.dims {
            r.u64(d);
        }
        r.mark(&format!("ti{i}.type"));
        r.u32(t.ty);
        r.mark(&format!("ti{i}.offset"));
        r.u64(t.offset);
    }
    r.pad_to(align);
    r.mark("data");
    for i in 0..data_len {
        r.b.push((i % 251) as u8);
    }
    r
}

/// The small valid file most corruption tests start from: six metadata entries (string, string,
/// u32, u32 array, string array, bool) and two F32 tensors, `a` [8] at 0 and `b` [4, 2] at 32.
fn tiny() -> Raw {
    build(
        &[
            (b"general.architecture", v_str(b"test")),
            (b"general.name", v_str(b"tiny")),
            (b"t.u32", v_u32(7)),
            (b"t.arr", v_arr(4, 3, &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0])),
            (b"t.toks", v_arr(8, 3, &strs(&[b"ab", b"c", b"def"]))),
            (b"t.flag", (7, vec![1])),
        ],
        &[ti(b"a", &[8], 0, 0), ti(b"b", &[4, 2], 0, 32)],
        32,
        64,
    )
}

// ---------------------------------------------------------------------------------------------
// Error checks.

/// Parse `bytes`, requiring an `Error::Format` whose field contains `field`; returns it.
#[track_caller]
fn expect_format(bytes: &[u8], field: &str) -> (String, Option<u64>, String) {
    match Gguf::parse(bytes) {
        Err(Error::Format {
            file,
            field: f,
            offset,
            detail,
        }) => {
            assert_eq!(file, "<buffer>");
            assert!(
                f.contains(field),
                "expected an error about `{field}`, got field `{f}`: {detail}"
            );
            (f, offset, detail)
        }
        Err(e) => panic!("expected Error::Format about `{field}`, got {e}"),
        Ok(g) => panic!(
            "expected Error::Format about `{field}`, but the file parsed ({} tensors)",
            g.tensors().len()
        ),
    }
}

#[track_caller]
fn expect_unsupported(bytes: &[u8], detail_has: &str) -> String {
    match Gguf::parse(bytes) {
        Err(Error::Unsupported { detail, .. }) => {
            assert!(
                detail.contains(detail_has),
                "expected `{detail_has}` in: {detail}"
            );
            detail
        }
        Err(e) => panic!("expected Error::Unsupported, got {e}"),
        Ok(_) => panic!("expected Error::Unsupported, but the file parsed"),
    }
}

/// Any refusal of the two kinds a malformed file may produce (never Io/Invalid, never Ok).
#[track_caller]
fn expect_refused(bytes: &[u8], what: &str) {
    match Gguf::parse(bytes) {
        Err(Error::Format { .. }) | Err(Error::Unsupported { .. }) => {}
        Err(e) => panic!("{what}: wrong error kind: {e}"),
        Ok(_) => panic!("{what}: parsed, expected a refusal"),
    }
}

// ---------------------------------------------------------------------------------------------
// The real model.

fn model_path() -> PathBuf {
    match std::env::var_os("EDGE_RUN_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    }
}

#[test]
fn real_model_matches_gguf_py() {
    let path = model_path();
    let map = edge_run::mmap::MappedFile::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open the test model {} ({e}); run `models/fetch.sh` to download it, or set EDGE_RUN_MODEL",
            path.display()
        )
    });
    let g = Gguf::parse_named(&map, "SmolLM2").unwrap_or_else(|e| panic!("{e}"));

    // Every expected value below was read with gguf-py's GGUFReader (the `gguf` Python package,
    // llama.cpp's reference implementation), not with this crate:
    //   r = GGUFReader(path); len(r.tensors), r.fields[k].parts[...], t.data_offset, t.n_bytes, t.data
    assert_eq!(map.len(), 98_362_432);
    assert_eq!(g.version(), 3);
    assert_eq!(g.tensors().len(), 272);
    assert_eq!(g.metadata().len(), 33); // GGUF.kv_count
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset(), 1_785_664); // r.data_offset

    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(
        g.get_str("general.name").unwrap(),
        "Smollm2 135M 8k Lc100K Mix1 Ep2"
    );
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(g.get_u32("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(g.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(g.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.get_u32("llama.vocab_size").unwrap(), 49152);
    assert_eq!(g.get_u32("general.file_type").unwrap(), 3);
    // gguf-py: bytes 00 50 c3 47 (= 100000.0) and ac c5 27 37 (1e-5 as f32).
    assert_eq!(
        g.get_f32("llama.rope.freq_base").unwrap().to_bits(),
        0x47c3_5000
    );
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon")
            .unwrap()
            .to_bits(),
        0x3727_c5ac
    );
    assert!(!g.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(g.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);
    let tmpl = g.get_str("tokenizer.chat_template").unwrap();
    assert_eq!(tmpl.len(), 368);
    assert!(tmpl.starts_with("{% for message in messages %}{% if loop.first and messages[0"));
    assert_eq!(g.get_str_array("general.languages").unwrap(), vec!["en"]);

    let toks = g.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!((toks.elem_type(), toks.len()), (ValueType::String, 49152));
    let tv = toks.to_vec_str().unwrap();
    assert_eq!(
        &tv[..5],
        &[
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<repo_name>",
            "<reponame>"
        ]
    );
    assert_eq!(tv[100], "t");
    assert_eq!(tv[49151], "ectable");
    assert_eq!(toks.get(49151), Some(Value::String("ectable")));
    assert_eq!(toks.as_str_iter().unwrap().count(), 49152);
    let merges = g.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(
        (merges.len(), merges[0], merges[48899]),
        (48900, "Ġ t", "ect able")
    );
    let tt = g.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(tt.len(), 49152);
    assert_eq!(tt.iter().filter(|&&t| t == 3).count(), 17);
    assert_eq!(tt.iter().filter(|&&t| t == 1).count(), 49135);
    assert_eq!(&tt[15..20], &[3, 3, 1, 1, 1]);
    assert_eq!(describe_value(&Value::Array(*toks)), "[string; 49152]");
    assert_eq!(describe_value(g.get("llama.block_count").unwrap()), "30");

    // Tensors (gguf-py: tensor_type, shape, data_offset, n_bytes).
    let te = g.tensor("token_embd.weight").unwrap();
    assert_eq!(g.tensors()[0].name, "token_embd.weight");
    assert_eq!(
        (te.ty, te.n_dims, te.dims),
        (QuantType::Q8_0, 2, [576, 49152, 1, 1])
    );
    assert_eq!((te.offset, te.size), (1_785_664, 30_081_024));
    assert_eq!(
        (te.row_len(), te.n_rows(), te.n_elements()),
        (576, 49152, 28_311_552)
    );
    assert_eq!(
        &g.tensor_data(te)[..8],
        &[0x32, 0x19, 0xd6, 0x0d, 0x13, 0xf7, 0xe5, 0xee]
    );
    let fd = g.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (fd.ty, fd.shape(), fd.offset, fd.size),
        (QuantType::Q4_1, &[1536u64, 576][..], 31_868_992, 552_960)
    );
    let norm = g.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(
        (norm.ty, norm.shape(), norm.offset, norm.size),
        (QuantType::F32, &[576u64][..], 31_866_688, 2304)
    );
    let v = g.tensor_f32(norm).unwrap();
    // Exact binary fractions; compared in f64 so the literals keep gguf-py's printed digits.
    let head: Vec<f64> = v[..4].iter().map(|&x| x as f64).collect();
    assert_eq!(
        head,
        [
            0.01397705078125,
            0.0238037109375,
            -0.019775390625,
            -0.0302734375
        ]
    );
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    assert!((sum - 0.6129436492919922).abs() < 1e-9, "sum {sum}");
    let on = g.tensor("output_norm.weight").unwrap();
    assert_eq!((on.offset, on.size), (98_360_128, 2304));
    assert_eq!(on.offset + on.size as u64, map.len() as u64);
    assert_eq!(
        &g.tensor_f32(on).unwrap()[..3],
        &[1.7578125, 1.8203125, 1.78125]
    );
    let count = |ty| g.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!(
        (
            count(QuantType::Q4_1),
            count(QuantType::F32),
            count(QuantType::Q8_0)
        ),
        (210, 61, 1)
    );
    assert!(
        g.tensor_f32(te).is_err(),
        "a Q8_0 tensor is not an f32 view"
    );

    // Typed getters coerce losslessly and otherwise name key, expected and found type.
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_i32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_f32("llama.block_count").unwrap(), 30.0);
    assert_eq!(g.opt_u32("no.such.key").unwrap(), None);
    match g.get_str("llama.block_count") {
        Err(Error::Format {
            file,
            field,
            detail,
            offset,
        }) => {
            assert_eq!(file, "SmolLM2");
            assert!(field.contains("llama.block_count"), "{field}");
            assert!(
                detail.contains("string") && detail.contains("u32"),
                "{detail}"
            );
            assert!(offset.is_some());
        }
        r => panic!("{r:?}"),
    }
    match g.get_u32("no.such.key") {
        Err(e @ Error::Format { .. }) => assert!(e.to_string().contains("no.such.key"), "{e}"),
        r => panic!("{r:?}"),
    }
    assert!(g.get_bool("llama.block_count").is_err());
    assert!(g.get_u32("tokenizer.ggml.tokens").is_err());
    assert!(g.get_u32_array("tokenizer.ggml.tokens").is_err());
}

// ---------------------------------------------------------------------------------------------
// Writer → reader.

#[test]
fn writer_round_trip_every_value_type() {
    let nested = MetaArray::Array(vec![
        MetaArray::U32(vec![1, 2, 3]),
        MetaArray::String(vec!["x".into(), "".into()]),
        MetaArray::Array(vec![MetaArray::I8(vec![-1]), MetaArray::Bool(vec![])]),
        MetaArray::F64(vec![]),
    ]);
    let mut w = GgufWriter::new();
    w.add("u8", 250u8).unwrap();
    w.add("i8", -7i8).unwrap();
    w.add("u16", 65535u16).unwrap();
    w.add("i16", -32768i16).unwrap();
    w.add("u32", 4_000_000_000u32).unwrap();
    w.add("i32", -2_000_000_000i32).unwrap();
    w.add("u64", u64::MAX).unwrap();
    w.add("i64", i64::MIN).unwrap();
    w.add("f32", 1.5f32).unwrap();
    w.add("f64", -2.25e300f64).unwrap();
    w.add("bool.t", true).unwrap();
    w.add("bool.f", false).unwrap();
    w.add("str", "héllo ✓ \u{1F600}").unwrap();
    w.add("str.empty", "").unwrap();
    w.add("a.u8", vec![0u8, 255]).unwrap();
    w.add("a.i8", vec![-128i8, 127]).unwrap();
    w.add("a.u16", vec![1u16, 65535]).unwrap();
    w.add("a.i16", vec![-1i16, 300]).unwrap();
    w.add("a.u32", vec![0u32, 7, u32::MAX]).unwrap();
    w.add("a.i32", vec![-5i32, 5]).unwrap();
    w.add("a.u64", vec![u64::MAX, 0]).unwrap();
    w.add("a.i64", vec![i64::MIN, -1]).unwrap();
    w.add("a.f32", vec![0.25f32, -1e30, f32::INFINITY]).unwrap();
    w.add("a.f64", vec![1e-300f64]).unwrap();
    w.add("a.bool", vec![true, false, true]).unwrap();
    w.add("a.str", vec!["<s>", "", "ünï"]).unwrap();
    w.add("a.empty", MetaArray::U32(vec![])).unwrap();
    w.add("a.nested", nested.clone()).unwrap();
    let t0: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
    let q8: Vec<u8> = (0..2 * 34).map(|i| (i * 7 % 256) as u8).collect();
    let q41: Vec<u8> = (0..4 * 20).map(|i| (i * 13 % 256) as u8).collect();
    w.add_tensor("t.f32", &[6, 4], QuantType::F32, f32_bytes(&t0))
        .unwrap();
    w.add_tensor("t.q8", &[64], QuantType::Q8_0, &q8[..])
        .unwrap();
    w.add_tensor(
        "t.q41",
        &[32, 2, 1, 2],
        QuantType::Q4_1,
        Cow::Borrowed(&q41[..]),
    )
    .unwrap();
    let bytes = w.to_bytes();
    let mut streamed = Vec::new();
    assert_eq!(w.write_to(&mut streamed).unwrap(), bytes.len() as u64);
    assert_eq!(streamed, bytes);

    let g = Gguf::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.version(), 3);
    assert_eq!(g.metadata().len(), 28);
    let v = |k: &str| *g.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(v("u8"), Value::U8(250));
    assert_eq!(v("i8"), Value::I8(-7));
    assert_eq!(v("u16"), Value::U16(65535));
    assert_eq!(v("i16"), Value::I16(-32768));
    assert_eq!(v("u32"), Value::U32(4_000_000_000));
    assert_eq!(v("i32"), Value::I32(-2_000_000_000));
    assert_eq!(v("u64"), Value::U64(u64::MAX));
    assert_eq!(v("i64"), Value::I64(i64::MIN));
    assert_eq!(v("f32"), Value::F32(1.5));
    assert_eq!(v("f64"), Value::F64(-2.25e300));
    assert_eq!(v("bool.t"), Value::Bool(true));
    assert_eq!(v("bool.f"), Value::Bool(false));
    assert_eq!(v("str"), Value::String("héllo ✓ \u{1F600}"));
    assert_eq!(v("str.empty"), Value::String(""));
    let arr = |k: &str| *g.get_array(k).unwrap();
    let vals = |k: &str| arr(k).iter().collect::<Vec<_>>();
    assert_eq!(vals("a.u8"), [Value::U8(0), Value::U8(255)]);
    assert_eq!(vals("a.i8"), [Value::I8(-128), Value::I8(127)]);
    assert_eq!(vals("a.u16"), [Value::U16(1), Value::U16(65535)]);
    assert_eq!(vals("a.i16"), [Value::I16(-1), Value::I16(300)]);
    assert_eq!(
        vals("a.u32"),
        [Value::U32(0), Value::U32(7), Value::U32(u32::MAX)]
    );
    assert_eq!(vals("a.i32"), [Value::I32(-5), Value::I32(5)]);
    assert_eq!(vals("a.u64"), [Value::U64(u64::MAX), Value::U64(0)]);
    assert_eq!(vals("a.i64"), [Value::I64(i64::MIN), Value::I64(-1)]);
    assert_eq!(
        vals("a.f32"),
        [
            Value::F32(0.25),
            Value::F32(-1e30),
            Value::F32(f32::INFINITY)
        ]
    );
    assert_eq!(vals("a.f64"), [Value::F64(1e-300)]);
    assert_eq!(
        vals("a.bool"),
        [Value::Bool(true), Value::Bool(false), Value::Bool(true)]
    );
    assert_eq!(arr("a.str").to_vec_str().unwrap(), ["<s>", "", "ünï"]);
    assert_eq!(
        (arr("a.empty").len(), arr("a.empty").elem_type()),
        (0, ValueType::U32)
    );
    // Random access agrees with iteration.
    assert_eq!(arr("a.u32").get(2), Some(Value::U32(u32::MAX)));
    assert_eq!(arr("a.str").get(2), Some(Value::String("ünï")));
    assert_eq!(arr("a.str").get(3), None);
    assert_eq!(arr("a.u32").raw_bytes().len(), 12);

    // Nested arrays keep their structure and per-level types.
    let n = arr("a.nested");
    assert_eq!((n.elem_type(), n.len()), (ValueType::Array, 4));
    let inner: Vec<_> = n.iter().map(|v| *v.as_array().unwrap()).collect();
    assert_eq!(inner[0].to_vec_u32().unwrap(), [1, 2, 3]);
    assert_eq!(inner[1].to_vec_str().unwrap(), ["x", ""]);
    let deep: Vec<_> = inner[2].iter().map(|v| *v.as_array().unwrap()).collect();
    assert_eq!(deep[0].iter().collect::<Vec<_>>(), [Value::I8(-1)]);
    assert_eq!((deep[1].elem_type(), deep[1].len()), (ValueType::Bool, 0));
    assert_eq!((inner[3].elem_type(), inner[3].len()), (ValueType::F64, 0));
    assert_eq!(MetaArray::from_view(&n), nested);

    // Tensors: shapes, offsets aligned to 32, data intact, padding between them.
    let names: Vec<_> = g.tensors().iter().map(|t| t.name).collect();
    assert_eq!(names, ["t.f32", "t.q8", "t.q41"]);
    let tf = g.tensor("t.f32").unwrap();
    assert_eq!(
        (tf.dims, tf.n_dims, tf.ty, tf.size),
        ([6, 4, 1, 1], 2, QuantType::F32, 96)
    );
    assert_eq!(g.tensor_f32(tf).unwrap(), &t0[..]);
    let tq = g.tensor("t.q8").unwrap();
    assert_eq!(
        (tq.dims, tq.ty, tq.size, tq.n_rows(), tq.row_len()),
        ([64, 1, 1, 1], QuantType::Q8_0, 68, 1, 64)
    );
    assert_eq!(g.tensor_data(tq), &q8[..]);
    let t4 = g.tensor("t.q41").unwrap();
    assert_eq!(
        (t4.dims, t4.n_dims, t4.size, t4.n_rows(), t4.n_elements()),
        ([32, 2, 1, 2], 4, 80, 4, 128)
    );
    assert_eq!(g.tensor_data(t4), &q41[..]);
    for t in g.tensors() {
        assert_eq!((t.offset - g.data_offset()) % 32, 0, "{}", t.name);
    }
    assert_eq!(tq.offset, tf.offset + 96);
    assert_eq!(t4.offset, tq.offset + 96); // 68 bytes padded to 96
    assert_eq!(bytes.len() as u64, t4.offset + 96);
    assert!(bytes[(tq.offset + 68) as usize..t4.offset as usize]
        .iter()
        .all(|&b| b == 0));

    // Copying every entry through MetaValue::from_value reproduces the metadata bytes exactly.
    let mut w2 = GgufWriter::new();
    for e in g.metadata() {
        w2.add(e.key, MetaValue::from_value(&e.value)).unwrap();
    }
    for t in g.tensors() {
        w2.add_tensor(t.name, t.shape(), t.ty, g.tensor_data(t))
            .unwrap();
    }
    assert_eq!(w2.to_bytes(), bytes);
}

#[test]
fn writer_output_matches_hand_assembled_bytes() {
    // The same content written by GgufWriter and by this file's own encoder must be identical.
    let mut w = GgufWriter::new();
    w.add("general.architecture", "test").unwrap();
    w.add("general.alignment", 64u32).unwrap();
    w.add("t.toks", vec!["ab", "c"]).unwrap();
    w.add("t.flag", true).unwrap();
    w.add_tensor("a", &[3], QuantType::F32, vec![1u8; 12])
        .unwrap();
    w.add_tensor("b", &[2, 2], QuantType::F16, vec![2u8; 8])
        .unwrap();
    let mut r = build(
        &[
            (b"general.architecture", v_str(b"test")),
            (b"general.alignment", v_u32(64)),
            (b"t.toks", v_arr(8, 2, &strs(&[b"ab", b"c"]))),
            (b"t.flag", (7, vec![1])),
        ],
        &[ti(b"a", &[3], 0, 0), ti(b"b", &[2, 2], 1, 64)],
        64,
        0,
    );
    r.bytes(&[1; 12])
        .bytes(&[0; 52])
        .bytes(&[2; 8])
        .bytes(&[0; 56]);
    assert_eq!(w.alignment(), 64);
    assert_eq!(w.to_bytes(), r.b);
    let g = Gguf::parse(&r.b).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.tensor_data(g.tensor("b").unwrap()), &[2; 8]);
}

#[test]
fn writer_refuses_bad_input() {
    let mut w = GgufWriter::new();
    w.add("k", 1u32).unwrap();
    assert!(
        matches!(w.add("k", 2u32), Err(Error::Invalid(_))),
        "duplicate key"
    );
    assert!(w.add("", 2u32).is_err(), "empty key");
    for bad in [
        MetaValue::U32(0),
        MetaValue::U32(48),
        MetaValue::U32(1 << 21),
        MetaValue::U64(32),
    ] {
        assert!(
            w.add("general.alignment", bad.clone()).is_err(),
            "alignment {bad:?}"
        );
    }
    w.add_tensor("t", &[4], QuantType::F32, vec![0u8; 16])
        .unwrap();
    let refused: [(&str, &[u64], QuantType, usize, &str); 8] = [
        ("t", &[4], QuantType::F32, 16, "duplicate tensor"),
        ("u", &[4], QuantType::F32, 15, "wrong data size"),
        ("u", &[], QuantType::F32, 0, "no dims"),
        ("u", &[1, 1, 1, 1, 1], QuantType::F32, 4, "5 dims"),
        ("u", &[4, 0], QuantType::F32, 0, "zero dim"),
        ("u", &[16], QuantType::Q8_0, 17, "not a block multiple"),
        ("u", &[1 << 40, 1 << 40], QuantType::F32, 0, "overflow"),
        ("", &[4], QuantType::F32, 16, "empty name"),
    ];
    for (name, dims, ty, len, what) in refused {
        assert!(
            w.add_tensor(name, dims, ty, vec![0u8; len]).is_err(),
            "{what}"
        );
    }
    // The refusals left the writer as it was.
    let g_bytes = w.to_bytes();
    let g = Gguf::parse(&g_bytes).unwrap();
    assert_eq!((g.metadata().len(), g.tensors().len()), (1, 1));
}

#[test]
fn writer_to_file() {
    let dir = std::env::temp_dir().join(format!("edge-run-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.gguf");
    let mut w = GgufWriter::new();
    w.add("general.architecture", "x").unwrap();
    w.add_tensor("t", &[2], QuantType::F32, f32_bytes(&[1.0, 2.0]))
        .unwrap();
    let n = w.write_file(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, n);
    assert_eq!(bytes, w.to_bytes());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        w.write_file(&dir.join("missing/dir/w.gguf")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn writer_streams_tensors_produced_while_writing() {
    // The same file, once with every tensor's data given and once with the middle one streamed.
    let data: Vec<u8> = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let writer = |stream_b: bool| {
        let mut w = GgufWriter::new();
        w.add("general.alignment", 64u32).unwrap();
        w.add_tensor("a", &[2], QuantType::F32, f32_bytes(&[7.0, 8.0]))
            .unwrap();
        if stream_b {
            w.add_tensor_streamed("b", &[3, 2], QuantType::F32).unwrap();
        } else {
            w.add_tensor("b", &[3, 2], QuantType::F32, data.clone())
                .unwrap();
        }
        w.add_tensor("c", &[1], QuantType::F32, f32_bytes(&[9.0]))
            .unwrap();
        w
    };
    let given = writer(false);
    let mut streamed = writer(true);
    let mut out = Vec::new();
    let mut asked = Vec::new();
    let n = streamed
        .write_streaming(&mut out, |i, w| -> std::io::Result<()> {
            asked.push(i);
            // In two pieces, as a producer of row blocks would.
            std::io::Write::write_all(w, &data[..8])?;
            std::io::Write::write_all(w, &data[8..])
        })
        .unwrap();
    assert_eq!(asked, vec![1]);
    assert_eq!(n, out.len() as u64);
    assert_eq!(out, given.to_bytes());
    // A producer that writes the wrong number of bytes is an error, as is writing a streamed tensor
    // without a producer.
    let short = streamed.write_streaming(&mut Vec::new(), |_, w| {
        std::io::Write::write_all(w, &data[..8])
    });
    assert!(short
        .unwrap_err()
        .to_string()
        .contains("needs 24 bytes, 8 were written"));
    assert!(streamed.write_to(&mut Vec::new()).is_err());
    assert!(
        streamed
            .add_tensor_streamed("b", &[3, 2], QuantType::F32)
            .is_err(),
        "duplicate name"
    );
}

// ---------------------------------------------------------------------------------------------
// Typed access on a synthetic file.

#[test]
fn typed_getters_coerce_only_when_lossless() {
    let mut w = GgufWriter::new();
    w.add("u8", 200u8).unwrap();
    w.add("i8.neg", -1i8).unwrap();
    w.add("u64.big", 1u64 << 40).unwrap();
    w.add("i64.small", 12i64).unwrap();
    w.add("f64", 0.1f64).unwrap();
    w.add("f64.huge", 1e300f64).unwrap();
    w.add("i32.exact", 1i32 << 24).unwrap();
    w.add("i32.inexact", (1i32 << 24) + 1).unwrap();
    w.add("s", "text").unwrap();
    w.add("b", true).unwrap();
    w.add("a.i8", vec![-1i8, 2]).unwrap();
    w.add("a.u64", vec![1u64, 1 << 33]).unwrap();
    w.add("a.f64", vec![0.5f64, 1e300]).unwrap();
    w.add("a.u16", vec![3u16, 65535]).unwrap();
    w.add("a.bool", vec![true]).unwrap();
    let bytes = w.to_bytes();
    let g = Gguf::parse_named(&bytes, "synthetic.gguf").unwrap();
    assert_eq!(g.get_u32("u8").unwrap(), 200);
    assert_eq!(g.get_i32("u8").unwrap(), 200);
    assert_eq!(g.get_i64("i8.neg").unwrap(), -1);
    assert!(g.get_u32("i8.neg").is_err(), "negative to unsigned");
    assert!(g.get_u64("i8.neg").is_err());
    assert!(g.get_u32("u64.big").is_err(), "2^40 does not fit u32");
    assert_eq!(g.get_u64("u64.big").unwrap(), 1 << 40);
    assert_eq!(g.get_u32("i64.small").unwrap(), 12);
    assert_eq!(g.get_f32("f64").unwrap(), 0.1f32);
    assert!(g.get_f32("f64.huge").is_err(), "finite f64 overflowing f32");
    assert_eq!(g.get_f64("f64.huge").unwrap(), 1e300);
    assert_eq!(g.get_f32("i32.exact").unwrap(), 16_777_216.0);
    assert!(
        g.get_f32("i32.inexact").is_err(),
        "2^24+1 is not exact in f32"
    );
    assert_eq!(g.get_f64("i32.inexact").unwrap(), 16_777_217.0);
    assert!(g.get_u32("f64").is_err(), "float to integer");
    assert!(g.get_bool("u8").is_err(), "integer to bool");
    assert!(g.get_u32("b").is_err(), "bool to integer");
    assert_eq!(g.get_str("s").unwrap(), "text");
    assert_eq!(g.opt_str("s").unwrap(), Some("text"));
    assert!(g.opt_str("u8").is_err());
    assert_eq!(g.opt_bool("nope").unwrap(), None);
    assert!(g.get_array("s").is_err());
    match g.get_u32("u64.big") {
        Err(Error::Format {
            file,
            field,
            detail,
            offset: Some(_),
        }) => {
            assert_eq!(file, "synthetic.gguf");
            assert_eq!(field, "metadata[\"u64.big\"]");
            assert!(
                detail.contains("u32")
                    && detail.contains("u64")
                    && detail.contains("1099511627776"),
                "{detail}"
            );
        }
        r => panic!("{r:?}"),
    }

    // Array coercions.
    assert_eq!(g.get_i32_array("a.i8").unwrap(), [-1, 2]);
    assert!(g.get_u32_array("a.i8").is_err(), "-1 is not a u32");
    assert_eq!(g.get_f32_array("a.i8").unwrap(), [-1.0, 2.0]);
    match g.get_u32_array("a.u64") {
        Err(Error::Format { file, field, .. }) => {
            assert_eq!(file, "synthetic.gguf");
            assert_eq!(
                field, "metadata[\"a.u64\"][1]",
                "names the first element that does not fit"
            );
        }
        r => panic!("{r:?}"),
    }
    assert!(g.get_f32_array("a.f64").is_err(), "1e300 overflows f32");
    assert_eq!(g.get_u32_array("a.u16").unwrap(), [3, 65535]);
    assert!(g.get_i32_array("a.bool").is_err());
    assert!(g.get_f32_array("a.bool").is_err());
    assert!(g.get_str_array("a.u16").is_err());
    assert!(g.get_array("a.u16").unwrap().as_str_iter().is_err());
}

#[test]
fn describe_value_is_short() {
    let mut w = GgufWriter::new();
    w.add("s", "line1\nline2").unwrap();
    w.add("long", "x".repeat(100)).unwrap();
    w.add("small", vec![1u32, 2]).unwrap();
    w.add("big", vec![0u32; 49152]).unwrap();
    w.add("toks", vec!["a", "b", "c", "d", "e"]).unwrap();
    w.add("nested", MetaArray::Array(vec![MetaArray::U8(vec![1])]))
        .unwrap();
    w.add("f", 1e-5f32).unwrap();
    w.add("b", false).unwrap();
    w.add("i", -3i64).unwrap();
    let bytes = w.to_bytes();
    let g = Gguf::parse(&bytes).unwrap();
    let d = |k: &str| describe_value(g.get(k).unwrap());
    assert_eq!(d("s"), r#""line1\nline2""#);
    assert_eq!(d("long"), format!("\"{}\"… (100 chars)", "x".repeat(60)));
    assert_eq!(d("small"), "[1, 2]");
    assert_eq!(d("big"), "[u32; 49152]");
    assert_eq!(d("toks"), "[string; 5]");
    assert_eq!(d("nested"), "[array; 1]");
    assert_eq!(d("f"), "1e-5");
    assert_eq!(d("b"), "false");
    assert_eq!(d("i"), "-3");
}

#[test]
fn f32_views_never_panic_on_misalignment() {
    // alignment 1 lets the tensor start at any address; shift the buffer through 4 positions.
    let mut w = GgufWriter::new();
    w.add("general.alignment", 1u32).unwrap();
    w.add_tensor("t", &[3], QuantType::F32, f32_bytes(&[1.0, 2.0, 3.0]))
        .unwrap();
    let file = w.to_bytes();
    let mut buf = vec![0u8; file.len() + 4];
    let (mut ok, mut refused) = (0, 0);
    for shift in 0..4 {
        buf[shift..shift + file.len()].copy_from_slice(&file);
        let g = Gguf::parse(&buf[shift..shift + file.len()]).unwrap();
        let t = g.tensor("t").unwrap();
        let aligned = (g.tensor_data(t).as_ptr() as usize).is_multiple_of(4);
        match g.tensor_f32(t) {
            Ok(v) => {
                assert!(aligned);
                assert_eq!(v, &[1.0, 2.0, 3.0]);
                ok += 1;
            }
            Err(Error::Format { field, .. }) => {
                assert!(!aligned);
                assert!(field.contains("\"t\""), "{field}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(g.tensor_as::<u8>(t).is_ok());
        assert!(
            g.tensor_as::<[u8; 5]>(t).is_err(),
            "12 bytes are not a whole number of 5-byte items"
        );
    }
    assert_eq!((ok, refused), (1, 3));
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

#[test]
fn tiny_fixture_is_valid() {
    // The base of the corruption tests must itself parse, with the values it was built with.
    let r = tiny();
    let g = Gguf::parse(&r.b).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.get_str("general.architecture").unwrap(), "test");
    assert_eq!(g.get_u32_array("t.arr").unwrap(), [1, 2, 3]);
    assert_eq!(g.get_str_array("t.toks").unwrap(), ["ab", "c", "def"]);
    assert!(g.get_bool("t.flag").unwrap());
    assert_eq!(g.data_offset(), r.at("data") as u64);
    let b = g.tensor("b").unwrap();
    assert_eq!(
        (b.offset, b.size, b.dims),
        (r.at("data") as u64 + 32, 32, [4, 2, 1, 1])
    );
    assert_eq!(g.tensor_data(b), &r.b[r.at("data") + 32..]);
}

#[test]
fn truncation_at_every_offset_is_refused() {
    let r = tiny();
    // The last tensor ends exactly at the end of the file, so every proper prefix lacks something.
    for len in 0..r.b.len() {
        match Gguf::parse(&r.b[..len]) {
            Err(Error::Format { offset, .. }) => {
                assert!(
                    offset.is_some_and(|o| o <= r.b.len() as u64),
                    "len {len}: offset {offset:?}"
                );
            }
            Err(e) => panic!("truncated to {len}: wrong error kind {e}"),
            Ok(_) => panic!("truncated to {len} of {} bytes: parsed", r.b.len()),
        }
    }
    // A few spot checks of what is named.
    expect_format(&r.b[..3], "header.magic");
    expect_format(&r.b[..6], "header.version");
    expect_format(&r.b[..12], "header.tensor_count");
    let (_, off, _) = expect_format(&r.b[..r.at("kv4.val") + 20], "metadata[\"t.toks\"]");
    assert!(off.is_some());
    expect_format(&r.b[..r.at("ti1.offset") + 3], "tensor_infos[\"b\"].offset");
    expect_format(&r.b[..r.at("data") + 40], "tensor_infos[\"b\"].offset");
}

#[test]
fn bad_magic_and_versions_are_refused() {
    let r = tiny();
    let mut b = r.b.clone();
    b[..4].copy_from_slice(b"GGML");
    let (_, off, detail) = expect_format(&b, "header.magic");
    assert_eq!(off, Some(0));
    assert!(detail.contains("GGML"), "{detail}");
    let d1 = expect_unsupported(&r.with_u32(4, 1), "version 1");
    assert!(d1.contains("2 and 3"), "{d1}");
    expect_format(&r.with_u32(4, 4), "header.version");
    expect_format(&r.with_u32(4, 0), "header.version");
    expect_format(&r.with_u32(4, u32::MAX), "header.version");
    // A big-endian file stores version 3 as 00 00 00 03.
    let mut be = r.b.clone();
    be[4..8].copy_from_slice(&3u32.to_be_bytes());
    expect_unsupported(&be, "big-endian");
    // Version 2 has the same layout and is accepted.
    assert!(Gguf::parse(&r.with_u32(4, 2)).is_ok());
    // In another file's name.
    let e = Gguf::parse(&b).unwrap_err().in_file("model.gguf");
    assert!(
        e.to_string()
            .starts_with("model.gguf: field `header.magic` at byte offset 0"),
        "{e}"
    );
}

const SWEEP: [u64; 6] = [0, 1, 1 << 31, 1 << 32, 1 << 63, u64::MAX];

#[test]
fn counts_and_lengths_sweep() {
    let r = tiny();
    // (what, position of the u64, its true value)
    let targets = [
        ("header.tensor_count", r.at("tensor_count"), 2),
        ("header.kv_count", r.at("kv_count"), 6),
        ("metadata[0].key length", r.at("kv0.key"), 20),
        ("general.architecture string length", r.at("kv0.val"), 4),
        ("t.arr array count", r.at("kv3.val") + 4, 3),
        ("t.toks array count", r.at("kv4.val") + 4, 3),
        ("t.toks[1] string length", r.at("kv4.val") + 12 + 8 + 2, 1),
        ("tensor a name length", r.at("ti0.name"), 1),
        ("tensor b offset", r.at("ti1.offset"), 32),
        ("tensor b dims[0]", r.at("ti1.dims"), 4),
    ];
    for (what, pos, truth) in targets {
        for v in SWEEP {
            if v == truth {
                continue;
            }
            let bytes = r.with_u64(pos, v);
            let res = Gguf::parse(&bytes);
            match (what, v) {
                // Undetectable by design: a smaller tensor count just means fewer tensors (the
                // remaining infos lie inside the data section, which the reader does not interpret).
                ("header.tensor_count", 0 | 1) => {
                    let g = res.unwrap_or_else(|e| panic!("{what} = {v}: {e}"));
                    assert_eq!(g.tensors().len() as u64, v);
                }
                // A 1-element-wide F32 tensor [1, 2] at 32 is a valid smaller tensor.
                ("tensor b dims[0]", 1) => {
                    let g = res.unwrap_or_else(|e| panic!("{what} = {v}: {e}"));
                    assert_eq!(g.tensor("b").unwrap().size, 8);
                }
                _ => match res {
                    Err(Error::Format { .. }) | Err(Error::Unsupported { .. }) => {}
                    Err(e) => panic!("{what} = {v}: wrong error kind {e}"),
                    Ok(_) => panic!("{what} = {v}: parsed"),
                },
            }
        }
    }
    // The header counts are refused before anything is read or allocated.
    for v in [1u64 << 31, 1 << 32, 1 << 63, u64::MAX] {
        expect_format(&r.with_u64(r.at("tensor_count"), v), "header.tensor_count");
        expect_format(&r.with_u64(r.at("kv_count"), v), "header.kv_count");
        expect_format(
            &r.with_u64(r.at("kv3.val") + 4, v),
            "metadata[\"t.arr\"].len",
        );
        expect_format(
            &r.with_u64(r.at("kv4.val") + 4, v),
            "metadata[\"t.toks\"].len",
        );
        expect_format(
            &r.with_u64(r.at("kv0.val"), v),
            "metadata[\"general.architecture\"].len",
        );
        expect_format(
            &r.with_u64(r.at("kv4.val") + 12 + 10, v),
            "metadata[\"t.toks\"][1].len",
        );
        expect_format(&r.with_u64(r.at("ti0.name"), v), "tensor_infos[0].name");
        expect_format(
            &r.with_u64(r.at("ti1.offset"), v),
            "tensor_infos[\"b\"].offset",
        );
    }
    expect_format(&r.with_u64(r.at("kv0.key"), 0), "metadata[0].key");
    expect_format(&r.with_u64(r.at("ti0.name"), 0), "tensor_infos[0].name");
}

fn with_alignment(kv: (u32, Vec<u8>), pad: usize) -> Raw {
    build(
        &[
            (b"general.architecture", v_str(b"test")),
            (b"general.alignment", kv),
        ],
        &[ti(b"a", &[8], 0, 0)],
        pad,
        32,
    )
}

#[test]
fn alignment_values() {
    for a in [0u32, 3, 48, 1 << 21, 1 << 31, u32::MAX] {
        let (_, _, detail) = expect_format(&with_alignment(v_u32(a), 32).b, "general.alignment");
        assert!(detail.contains(&a.to_string()), "{detail}");
    }
    for a in [1u32, 2, 8, 32, 64, 4096, 1 << 20] {
        let r = with_alignment(v_u32(a), a as usize);
        let g = Gguf::parse(&r.b).unwrap_or_else(|e| panic!("alignment {a}: {e}"));
        assert_eq!(g.alignment(), a);
        assert_eq!(g.data_offset(), r.at("data") as u64);
    }
    expect_format(&with_alignment(v_str(b"32"), 32).b, "general.alignment");
    expect_format(
        &with_alignment((10, u64::MAX.to_le_bytes().to_vec()), 32).b,
        "general.alignment",
    );
    // A u64 that holds a valid alignment is accepted like a u32 (lossless coercion).
    let g_bytes = with_alignment((10, 64u64.to_le_bytes().to_vec()), 64).b;
    assert_eq!(Gguf::parse(&g_bytes).unwrap().alignment(), 64);
    // The data section starts at the aligned end of the tensor infos, not at the unaligned end.
    let r = with_alignment(v_u32(64), 1);
    assert!(
        !r.at("data").is_multiple_of(64),
        "the fixture must be unaligned for this check"
    );
    expect_refused(&r.b, "unpadded tensor data");
}

fn one_tensor(dims: Vec<u64>, ty: u32, offset: u64, data_len: usize) -> Raw {
    build(
        &[(b"general.architecture", v_str(b"test"))],
        &[Ti {
            name: b"w",
            dims,
            ty,
            offset,
        }],
        32,
        data_len,
    )
}

#[test]
fn tensor_info_corruptions() {
    let r = tiny();
    expect_format(
        &r.with_u32(r.at("ti0.n_dims"), 0),
        "tensor_infos[\"a\"].n_dims",
    );
    expect_format(
        &r.with_u32(r.at("ti0.n_dims"), 5),
        "tensor_infos[\"a\"].n_dims",
    );
    expect_format(
        &r.with_u32(r.at("ti0.n_dims"), u32::MAX),
        "tensor_infos[\"a\"].n_dims",
    );
    expect_format(
        &one_tensor(vec![0], 0, 0, 32).b,
        "tensor_infos[\"w\"].dims[0]",
    );
    expect_format(
        &one_tensor(vec![8, 1, 0], 0, 0, 32).b,
        "tensor_infos[\"w\"].dims[2]",
    );
    expect_format(
        &one_tensor(vec![8, 1 << 63], 0, 0, 32).b,
        "tensor_infos[\"w\"].dims[1]",
    );
    let d = expect_unsupported(&one_tensor(vec![8], 99, 0, 32).b, "99");
    assert!(d.contains("\"w\""), "{d}");
    // Q2_K (10) is a real ggml type that edge-run does not implement.
    expect_unsupported(&one_tensor(vec![256], 10, 0, 84).b, "\"w\"");
    expect_unsupported(&r.with_u32(r.at("ti1.type"), u32::MAX), "\"b\"");
    // Overflowing products: elements and bytes.
    expect_format(
        &one_tensor(vec![1 << 32, 1 << 32, 1 << 32], 0, 0, 32).b,
        "tensor_infos[\"w\"].dims",
    );
    expect_format(
        &one_tensor(vec![1 << 62, 4], 0, 0, 32).b,
        "tensor_infos[\"w\"].dims",
    );
    expect_format(
        &one_tensor(vec![1 << 62], 0, 0, 32).b,
        "tensor_infos[\"w\"]",
    ); // 2^64 bytes
    expect_format(
        &one_tensor(vec![1 << 40, 1 << 20], 0, 0, 32).b,
        "tensor_infos[\"w\"]",
    );
    // Row length not a multiple of the block size (Q8_0 blocks are 32 wide).
    expect_format(
        &one_tensor(vec![16], 8, 0, 34).b,
        "tensor_infos[\"w\"].dims[0]",
    );
    assert!(Gguf::parse(&one_tensor(vec![32], 8, 0, 34).b).is_ok());
    // Offsets: misaligned, past the end, straddling the end, overlapping.
    for off in [1u64, 4, 16, 31] {
        expect_format(
            &r.with_u64(r.at("ti1.offset"), off),
            "tensor_infos[\"b\"].offset",
        );
    }
    for off in [64u64, 96, 1 << 40, u64::MAX - 31] {
        expect_format(
            &r.with_u64(r.at("ti1.offset"), off),
            "tensor_infos[\"b\"].offset",
        );
    }
    let (_, _, detail) = expect_format(
        &r.with_u64(r.at("ti1.offset"), 0),
        "tensor_infos[\"b\"].offset",
    );
    assert!(
        detail.contains("overlaps") && detail.contains("\"a\""),
        "{detail}"
    );
    // `a` moved onto `b`: overlap found whichever order the infos are in.
    expect_format(&r.with_u64(r.at("ti0.offset"), 32), "offset");
    // Swapped (non-overlapping) positions are fine.
    let mut swapped = r.with_u64(r.at("ti0.offset"), 32);
    swapped[r.at("ti1.offset")..r.at("ti1.offset") + 8].copy_from_slice(&0u64.to_le_bytes());
    let g = Gguf::parse(&swapped).unwrap();
    assert_eq!(g.tensor("a").unwrap().offset, r.at("data") as u64 + 32);
    // Tensor data would start past the end of a file that has tensors.
    expect_format(&r.b[..r.at("data") - 1], "data");
}

#[test]
fn duplicates_are_refused() {
    let dup_key = build(
        &[
            (b"general.architecture", v_str(b"a")),
            (b"x", v_u32(1)),
            (b"x", v_u32(1)),
        ],
        &[],
        32,
        0,
    );
    let (_, off, detail) = expect_format(&dup_key.b, "metadata[2].key");
    assert_eq!(off, Some(dup_key.at("kv2.key") as u64));
    assert!(detail.contains("metadata[1]"), "{detail}");
    let dup_tensor = build(
        &[(b"general.architecture", v_str(b"a"))],
        &[ti(b"w", &[8], 0, 0), ti(b"w", &[8], 0, 32)],
        32,
        64,
    );
    expect_format(&dup_tensor.b, "tensor_infos[1].name");
}

#[test]
fn bools_utf8_and_value_types() {
    let r = tiny();
    let mut b = r.b.clone();
    b[r.at("kv5.val")] = 2;
    let (_, off, _) = expect_format(&b, "metadata[\"t.flag\"]");
    assert_eq!(off, Some(r.at("kv5.val") as u64));
    b[r.at("kv5.val")] = 0xff;
    expect_format(&b, "metadata[\"t.flag\"]");
    let bools = build(&[(b"bs", v_arr(7, 3, &[1, 0, 2]))], &[], 32, 0);
    let (_, off, _) = expect_format(&bools.b, "metadata[\"bs\"][2]");
    assert_eq!(off, Some(bools.at("kv0.val") as u64 + 12 + 2));
    // Invalid UTF-8 in a key, a value, an array element and a tensor name.
    let mut b = r.b.clone();
    b[r.at("kv2.key") + 8] = 0xff;
    expect_format(&b, "metadata[2].key");
    let mut b = r.b.clone();
    b[r.at("kv1.val") + 8 + 1] = 0xc3; // a lead byte followed by ASCII
    expect_format(&b, "metadata[\"general.name\"]");
    let mut b = r.b.clone();
    b[r.at("kv4.val") + 12 + 8 + 2 + 8] = 0x80; // "c" → a lone continuation byte
    expect_format(&b, "metadata[\"t.toks\"][1]");
    let mut b = r.b.clone();
    b[r.at("ti1.name") + 8] = 0xfe;
    expect_format(&b, "tensor_infos[1].name");
    // Unknown value type ids, top level and in an array.
    for ty in [13u32, 99, u32::MAX] {
        expect_format(
            &r.with_u32(r.at("kv2.type"), ty),
            "metadata[\"t.u32\"].type",
        );
        expect_format(&r.with_u32(r.at("kv3.val"), ty), "metadata[\"t.arr\"].type");
    }
}

#[test]
fn nested_arrays() {
    // [[1u32, 2u32], ["x"]] encoded by hand.
    let mut inner = Raw::default();
    inner.u32(4).u64(2).u32(1).u32(2);
    inner.u32(8).u64(1).str(b"x");
    let ok = build(&[(b"n", v_arr(9, 2, &inner.b))], &[], 32, 0);
    let g = Gguf::parse(&ok.b).unwrap();
    let n = g.get_array("n").unwrap();
    let items: Vec<_> = n.iter().map(|v| *v.as_array().unwrap()).collect();
    assert_eq!(items[0].to_vec_u32().unwrap(), [1, 2]);
    assert_eq!(items[1].to_vec_str().unwrap(), ["x"]);
    assert_eq!(items[0].offset(), ok.at("kv0.val") as u64 + 12 + 12);
    assert!(
        n.to_vec_u32().is_err(),
        "an array of arrays is not an array of integers"
    );

    // Wrong declared types: the outer array says "array" but holds plain u32s (so the first u32 is
    // read as an inner element type, here 1 = i8 with an impossible count) …
    let mut plain = Raw::default();
    plain.u32(1).u32(2).u32(3).u32(4);
    expect_refused(
        &build(&[(b"n", v_arr(9, 2, &plain.b))], &[], 32, 0).b,
        "u32s declared as arrays",
    );
    // … an inner array with an unknown element type …
    let mut bad = Raw::default();
    bad.u32(4).u64(1).u32(5);
    bad.u32(13).u64(1).u32(5);
    expect_format(
        &build(&[(b"n", v_arr(9, 2, &bad.b))], &[], 32, 0).b,
        "metadata[\"n\"][1].type",
    );
    // … an outer array declared as strings that holds arrays (the type+count read as a length) …
    expect_refused(
        &build(&[(b"n", v_arr(8, 2, &inner.b))], &[], 32, 0).b,
        "arrays declared as strings",
    );
    // … and an inner array whose declared count exceeds what is left.
    let mut long = Raw::default();
    long.u32(4).u64(1 << 40).u32(1);
    expect_format(
        &build(&[(b"n", v_arr(9, 1, &long.b))], &[], 32, 0).b,
        "metadata[\"n\"][0].len",
    );
    // Nesting depth is limited (no unbounded recursion on hostile input): 100 levels deep.
    let mut deep = Raw::default();
    for _ in 0..100 {
        deep.u32(9).u64(1);
    }
    deep.u32(4).u64(0);
    let file = build(&[(b"d", (9, deep.b.clone()))], &[], 32, 0);
    expect_format(&file.b, "metadata[\"d\"]");
}

#[test]
fn random_corruption_never_panics() {
    // Deterministic (the library's generator); each case changes 1..4 bytes of the valid tiny file (biased towards
    // the header/metadata/infos region) or truncates and mutates. The parser must return, and
    // anything it accepts must have its tensors inside the buffer.
    let base = tiny().b;
    let mut rng = edge_run::sampling::Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut next = || rng.next_u64();
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                2 => b[i] ^ (1 << (next() % 8)),
                _ => next() as u8,
            };
        }
        if next() % 8 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        match Gguf::parse(&b) {
            Ok(g) => {
                accepted += 1;
                for t in g.tensors() {
                    assert_eq!(g.tensor_data(t).len(), t.size);
                }
                for e in g.metadata() {
                    let _ = describe_value(&e.value);
                    if let Value::Array(a) = e.value {
                        assert_eq!(a.iter().count(), a.len());
                    }
                }
            }
            Err(Error::Format { .. }) | Err(Error::Unsupported { .. }) => refused += 1,
            Err(e) => panic!("wrong error kind {e}"),
        }
    }
    println!("random corruption: {refused} refused, {accepted} accepted (e.g. changed data bytes)");
    assert!(
        refused > 10_000 && accepted > 100,
        "{refused} refused, {accepted} accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// Cross-check with gguf-py: tests/data/gguf/gguf_py_fixture.gguf was written by llama.cpp's Python
// package (tests/data/gguf/make_pyfixture.py). The reader must read back what the script wrote,
// and GgufWriter given the same content must produce the same bytes.

#[test]
fn gguf_py_fixture_reads_and_rewrites_identically() {
    let bytes = include_bytes!("data/gguf/gguf_py_fixture.gguf");
    let g = Gguf::parse(bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.get_str("general.architecture").unwrap(), "fixture");
    // The scalars: read back here, and written below by GgufWriter.
    let scalars = [
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(0.15625)),
        ("t.f64", Value::F64(-1.0e-300)),
        ("t.bool", Value::Bool(true)),
        ("t.str", Value::String("héllo ✓")),
    ];
    for (k, want) in scalars {
        assert_eq!(*g.get(k).unwrap_or_else(|| panic!("{k} missing")), want);
    }
    // gguf-py stores Python ints in arrays as INT32.
    let a = g.get_array("t.a.u32").unwrap();
    assert_eq!(
        (a.elem_type(), a.to_vec_u32().unwrap()),
        (ValueType::I32, vec![1, 2, 3])
    );
    assert_eq!(g.get_str_array("t.a.str").unwrap(), ["<s>", "", "ünï"]);
    assert_eq!(g.get_f32_array("t.a.f32").unwrap(), [0.5, -2.0]);
    let b: Vec<_> = g.get_array("t.a.bool").unwrap().iter().collect();
    assert_eq!(b, [Value::Bool(true), Value::Bool(false)]);
    let a16 = g.get_array("t.a.i16").unwrap();
    assert_eq!(
        (a16.elem_type(), a16.to_vec_i32().unwrap()),
        (ValueType::I16, vec![-1, 7])
    );
    let nested = g.get_array("t.nested").unwrap();
    let inner: Vec<_> = nested.iter().map(|v| *v.as_array().unwrap()).collect();
    assert_eq!(inner[0].to_vec_i32().unwrap(), [1, 2]);
    assert_eq!(inner[1].to_vec_str().unwrap(), ["x", "y"]);
    // gguf-py: w.f32 F32 shape [4, 3] at 736, 48 bytes; w.f16 F16 [3] at 800, 6 bytes.
    let wf = g.tensor("w.f32").unwrap();
    assert_eq!((wf.dims, wf.offset, wf.size), ([4, 3, 1, 1], 736, 48));
    let want: Vec<u8> = f32_bytes(&(0..12).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(g.tensor_data(wf), &want[..]);
    let wh = g.tensor("w.f16").unwrap();
    assert_eq!(
        (wh.ty, wh.dims, wh.offset, wh.size),
        (QuantType::F16, [3, 1, 1, 1], 800, 6)
    );
    assert_eq!(g.tensor_data(wh), &[0x00, 0x3c, 0x00, 0xb8, 0x00, 0x40]); // 1.0, -0.5, 2.0 as f16

    // The same content through GgufWriter, spelled out (not copied from the parse).
    let mut w = GgufWriter::new();
    w.add("general.architecture", "fixture").unwrap();
    for (k, x) in &scalars {
        w.add(k, MetaValue::from_value(x)).unwrap();
    }
    w.add("t.a.u32", vec![1i32, 2, 3]).unwrap();
    w.add("t.a.str", vec!["<s>", "", "ünï"]).unwrap();
    w.add("t.a.f32", vec![0.5f32, -2.0]).unwrap();
    w.add("t.a.bool", vec![true, false]).unwrap();
    w.add("t.a.i16", vec![-1i16, 7]).unwrap();
    w.add(
        "t.nested",
        MetaArray::Array(vec![
            MetaArray::I32(vec![1, 2]),
            MetaArray::from(vec!["x", "y"]),
        ]),
    )
    .unwrap();
    w.add_tensor("w.f32", &[4, 3], QuantType::F32, want.clone())
        .unwrap();
    w.add_tensor(
        "w.f16",
        &[3],
        QuantType::F16,
        vec![0x00, 0x3c, 0x00, 0xb8, 0x00, 0x40],
    )
    .unwrap();
    assert_eq!(w.to_bytes(), &bytes[..]);
}
