//! The whole graph lowered to one StableHLO function. Arguments: the graph's
//! inputs, then its state (the KV caches), then its weights by name; results:
//! the graph's outputs, then the final value of every state (the caches after
//! `kv_write`), so a step is one pure function the runtime can run and, later,
//! donate the caches to.

use crate::mlir::{float, ty, Body};
use tessera_core::hal::{AttentionParams, Graph, Op, RopeParams, RopeStyle, ValueId, ValueKind};
use tessera_core::{DType, Error, Result};

pub struct Lowered {
    pub text: String,
    /// Weight names in argument order (after inputs and state).
    pub weights: Vec<String>,
}

fn unsupported(what: String) -> Error {
    Error::Unsupported {
        backend: "tpu".into(),
        what,
    }
}

struct Ctx<'g> {
    g: &'g Graph,
    b: Body,
    /// SSA name of each value once lowered.
    names: Vec<Option<String>>,
}

impl Ctx<'_> {
    fn shape(&self, v: ValueId) -> Vec<usize> {
        self.g.ty(v).shape.clone()
    }
    fn dtype(&self, v: ValueId) -> DType {
        self.g.ty(v).dtype
    }
    fn name(&mut self, v: ValueId) -> Result<String> {
        if let Some(n) = &self.names[v.0 as usize] {
            return Ok(n.clone());
        }
        // A reshape is lowered where it is first used.
        if let ValueKind::Reshape(src) = self.g.value(v).kind {
            let s = self.name(src)?;
            let (from, to, d) = (self.shape(src), self.shape(v), self.dtype(v));
            let n = self.b.reshape(&s, d, &from, &to);
            self.names[v.0 as usize] = Some(n.clone());
            return Ok(n);
        }
        Err(Error::invalid(format!(
            "value {} used before it is computed",
            v.0
        )))
    }
}

pub fn lower(g: &Graph) -> Result<Lowered> {
    let mut c = Ctx {
        g,
        b: Body::default(),
        names: vec![None; g.values.len()],
    };
    let mut args = vec![];
    let mut arg = |c: &mut Ctx, v: ValueId, attr: String| {
        let n = format!("%a{}", args.len());
        args.push(format!("{n}: {}{attr}", ty(c.dtype(v), &c.shape(v))));
        c.names[v.0 as usize] = Some(n);
    };
    for &v in &g.inputs {
        arg(&mut c, v, String::new());
    }
    // Each state is donated to its updated value (output after the graph's).
    for (k, &v) in g.state.iter().enumerate() {
        arg(
            &mut c,
            v,
            format!(" {{tf.aliasing_output = {} : i32}}", g.outputs.len() + k),
        );
    }
    let mut weights: Vec<(String, ValueId)> = g
        .values
        .iter()
        .enumerate()
        .filter_map(|(i, val)| match &val.kind {
            ValueKind::Weight(name) => Some((name.clone(), ValueId(i as u32))),
            _ => None,
        })
        .collect();
    weights.sort();
    for (_, v) in &weights {
        arg(&mut c, *v, String::new());
    }
    // The newest value of each state, updated by kv_write.
    let mut state_now: Vec<String> = g
        .state
        .iter()
        .map(|&v| c.names[v.0 as usize].clone().unwrap_or_default())
        .collect();
    for node in &g.nodes {
        let ins = node
            .inputs
            .iter()
            .map(|&v| c.name(v))
            .collect::<Result<Vec<_>>>()?;
        let outs = lower_node(&mut c, &node.op, &node.inputs, &ins, &node.outputs)?;
        for (&v, n) in node.outputs.iter().zip(&outs) {
            c.names[v.0 as usize] = Some(n.clone());
        }
        if node.op == Op::KvWrite {
            // Which state did it update? Follow reshapes back to a State value.
            let mut root = node.inputs[0];
            while let ValueKind::Reshape(src) = g.value(root).kind {
                root = src;
            }
            if let Some(k) = g.state.iter().position(|&s| s == root) {
                state_now[k] = outs[0].clone();
            } else if let ValueKind::Node(..) = g.value(root).kind {
                // A cache updated twice: find the state through its first update.
                if let Some(k) = state_now
                    .iter()
                    .position(|n| Some(n) == c.names[root.0 as usize].as_ref())
                {
                    state_now[k] = outs[0].clone();
                }
            }
        }
    }
    let mut results = vec![];
    let mut result_tys = vec![];
    for &v in &g.outputs {
        results.push(c.name(v)?);
        result_tys.push(ty(c.dtype(v), &c.shape(v)));
    }
    for (k, &v) in g.state.iter().enumerate() {
        results.push(state_now[k].clone());
        result_tys.push(ty(c.dtype(v), &c.shape(v)));
    }
    let mut text = format!(
        "func.func @main({}) -> ({}) {{\n",
        args.join(", "),
        result_tys.join(", ")
    );
    for l in &c.b.lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&format!(
        "    return {} : {}\n}}\n",
        results.join(", "),
        result_tys.join(", ")
    ));
    Ok(Lowered {
        text,
        weights: weights.into_iter().map(|(n, _)| n).collect(),
    })
}

fn lower_node(
    c: &mut Ctx,
    op: &Op,
    iv: &[ValueId],
    i: &[String],
    ov: &[ValueId],
) -> Result<Vec<String>> {
    let f32 = DType::F32;
    let out_shape = c.shape(ov[0]);
    let act = c.dtype(ov[0]);
    if !matches!(op, Op::KvWrite | Op::Argmax | Op::Sample) && act != f32 {
        return Err(unsupported(format!("{act} activations")));
    }
    let t = ty(f32, &out_shape);
    Ok(match op {
        Op::Add => vec![c.b.binary("add", &i[0], &i[1], &t)],
        Op::SiluMul => {
            let s = c.b.unary("logistic", &i[0], &t);
            let m = c.b.binary("multiply", &i[0], &s, &t);
            vec![c.b.binary("multiply", &m, &i[1], &t)]
        }
        Op::RmsNorm { eps } => vec![rms_norm(c, &i[0], &i[1], *eps, &out_shape)],
        Op::AddRmsNorm { eps } => {
            let r = c.b.binary("add", &i[0], &i[1], &t);
            vec![rms_norm(c, &r, &i[2], *eps, &out_shape), r]
        }
        Op::Linear => {
            let (xs, ws) = (c.shape(iv[0]), c.shape(iv[1]));
            let w = c.b.convert(&i[1], c.dtype(iv[1]), f32, &ws);
            let y = c.b.op(format!(
                "stablehlo.dot_general {}, {w}, contracting_dims = [1] x [1] : ({}, {}) -> {t}",
                i[0],
                ty(f32, &xs),
                ty(f32, &ws)
            ));
            match i.get(2) {
                None => vec![y],
                Some(bias) => {
                    let bs = c.shape(iv[2]);
                    let bias = c.b.convert(bias, c.dtype(iv[2]), f32, &bs);
                    let bb = c.b.broadcast(&bias, f32, &bs, &out_shape, &[1]);
                    vec![c.b.binary("add", &y, &bb, &t)]
                }
            }
        }
        Op::Embedding => {
            let (ts, n) = (c.shape(iv[0]), c.shape(iv[1])[0]);
            let td = c.dtype(iv[0]);
            let ids = c.b.reshape(&i[1], DType::I32, &[n], &[n, 1]);
            let rows = c.b.op(format!(
                "\"stablehlo.gather\"({}, {ids}) {{dimension_numbers = #stablehlo.gather<offset_dims = [1], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, slice_sizes = array<i64: 1, {}>, indices_are_sorted = false}} : ({}, {}) -> {}",
                i[0],
                ts[1],
                ty(td, &ts),
                ty(DType::I32, &[n, 1]),
                ty(td, &out_shape)
            ));
            vec![c.b.convert(&rows, td, f32, &out_shape)]
        }
        Op::Rope(p) => vec![rope(c, &i[0], &i[1], p, &out_shape)],
        Op::GatherLast => vec![gather_last(c, &i[0], &i[1], &c.shape(iv[0]), &out_shape)],
        Op::Argmax => {
            let ls = c.shape(iv[0]);
            let l = c.b.convert(&i[0], c.dtype(iv[0]), f32, &ls);
            vec![argmax(c, &l, &ls)]
        }
        Op::Sample => {
            let ls = c.shape(iv[0]);
            let lt = ty(f32, &ls);
            let l = c.b.convert(&i[0], c.dtype(iv[0]), f32, &ls);
            let tb = c.b.broadcast(&i[1], f32, &[ls[0]], &ls, &[0]);
            let scaled = c.b.binary("divide", &l, &tb, &lt);
            let z = c.b.binary("add", &scaled, &i[2], &lt);
            let zero = c.b.splat(0.0, f32, &ls);
            let greedy = c.b.compare("LE", &tb, &zero, f32, &ls);
            let pick = c.b.select(&greedy, &l, &z, f32, &ls);
            vec![argmax(c, &pick, &ls)]
        }
        Op::KvWrite => vec![kv_write(c, iv, i)?],
        Op::PagedAttention(p) => vec![attention(c, iv, i, p)?],
        Op::LoraShrink => vec![lora(c, &iv[..3], &i[..3], None)],
        Op::LoraExpand => vec![lora(c, &iv[1..4], &i[1..4], Some(&i[0]))],
    })
}

/// One half of a LoRA delta: each token's slot of the stacked adapter
/// matrices (`[L, rows, cols]`) is gathered and dotted with the token's
/// vector (`[T, cols]`), giving `[T, rows]`; tokens whose slot is negative
/// or past `L` get zeros. With `base` (expand), the result is added to it.
fn lora(c: &mut Ctx, iv: &[ValueId], i: &[String], base: Option<&str>) -> String {
    let (f32, i32) = (DType::F32, DType::I32);
    let (vs, ss) = (c.shape(iv[0]), c.shape(iv[1]));
    let (t, l, rows, cols) = (vs[0], ss[0], ss[1], ss[2]);
    let stack = c.b.convert(&i[1], c.dtype(iv[1]), f32, &ss);
    let it = ty(i32, &[t]);
    let zero = c.b.splat(0.0, i32, &[t]);
    let last = c.b.splat(l.saturating_sub(1) as f64, i32, &[t]);
    let above = c.b.binary("maximum", &i[2], &zero, &it);
    let slot = c.b.binary("minimum", &above, &last, &it);
    let ids = c.b.reshape(&slot, i32, &[t], &[t, 1]);
    let picked = c.b.op(format!(
        "\"stablehlo.gather\"({stack}, {ids}) {{dimension_numbers = #stablehlo.gather<offset_dims = [1, 2], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, slice_sizes = array<i64: 1, {rows}, {cols}>, indices_are_sorted = false}} : ({}, {}) -> {}",
        ty(f32, &ss),
        ty(i32, &[t, 1]),
        ty(f32, &[t, rows, cols])
    ));
    let delta = c.b.op(format!(
        "stablehlo.dot_general {}, {picked}, batching_dims = [0] x [0], contracting_dims = [1] x [2] : ({}, {}) -> {}",
        i[0],
        ty(f32, &vs),
        ty(f32, &[t, rows, cols]),
        ty(f32, &[t, rows])
    ));
    // 1 where the slot is real, else 0, spread over each token's row.
    let count = c.b.splat(l as f64, i32, &[t]);
    let nonneg = c.b.compare("GE", &i[2], &zero, i32, &[t]);
    let below = c.b.compare("LT", &i[2], &count, i32, &[t]);
    let valid =
        c.b.binary("and", &nonneg, &below, &crate::mlir::ty_i1(&[t]));
    let (one, none) = (c.b.splat(1.0, f32, &[t]), c.b.splat(0.0, f32, &[t]));
    let keep = c.b.select(&valid, &one, &none, f32, &[t]);
    let keep = c.b.broadcast(&keep, f32, &[t], &[t, rows], &[0]);
    let out_t = ty(f32, &[t, rows]);
    let masked = c.b.binary("multiply", &delta, &keep, &out_t);
    match base {
        None => masked,
        Some(y) => c.b.binary("add", y, &masked, &out_t),
    }
}

fn rms_norm(c: &mut Ctx, x: &str, w: &str, eps: f32, s: &[usize]) -> String {
    let f32 = DType::F32;
    let t = ty(f32, s);
    let (rows, h) = (s[0], s[1]);
    let sq = c.b.binary("multiply", x, x, &t);
    let sum = c.b.reduce("add", &sq, s, 1);
    let rt = ty(f32, &[rows]);
    let n = c.b.splat(h as f64, f32, &[rows]);
    let mean = c.b.binary("divide", &sum, &n, &rt);
    let e = c.b.splat(eps as f64, f32, &[rows]);
    let me = c.b.binary("add", &mean, &e, &rt);
    let r = c.b.unary("rsqrt", &me, &rt);
    let rb = c.b.broadcast(&r, f32, &[rows], s, &[0]);
    let xn = c.b.binary("multiply", x, &rb, &t);
    let wb = c.b.broadcast(w, f32, &[h], s, &[1]);
    c.b.binary("multiply", &xn, &wb, &t)
}

fn rope(c: &mut Ctx, x: &str, pos: &str, p: &RopeParams, s: &[usize]) -> String {
    let f32 = DType::F32;
    let (tk, heads, d) = (s[0], s[1], s[2]);
    let half = d / 2;
    let posf = c.b.convert(pos, DType::I32, f32, &[tk]);
    let scale = c.b.splat(p.position_scale() as f64, f32, &[tk]);
    let posf = c.b.binary("multiply", &posf, &scale, &ty(f32, &[tk]));
    let freqs: Vec<String> = p.inv_freq().iter().map(|&f| float(f as f64)).collect();
    let inv = c.b.op(format!(
        "stablehlo.constant dense<[{}]> : {}",
        freqs.join(", "),
        ty(f32, &[half])
    ));
    let pb = c.b.broadcast(&posf, f32, &[tk], &[tk, half], &[0]);
    let ib = c.b.broadcast(&inv, f32, &[half], &[tk, half], &[1]);
    let ang = c.b.binary("multiply", &pb, &ib, &ty(f32, &[tk, half]));
    let cos = c.b.unary("cosine", &ang, &ty(f32, &[tk, half]));
    let sin = c.b.unary("sine", &ang, &ty(f32, &[tk, half]));
    let hs = [tk, heads, half];
    let cb = c.b.broadcast(&cos, f32, &[tk, half], &hs, &[0, 2]);
    let sb = c.b.broadcast(&sin, f32, &[tk, half], &hs, &[0, 2]);
    let ht = ty(f32, &hs);
    let (x1, x2) = match p.style {
        RopeStyle::Neox => (
            c.b.slice(x, f32, s, &[0, 0, 0], &[tk, heads, half]),
            c.b.slice(x, f32, s, &[0, 0, half], &[tk, heads, d]),
        ),
        RopeStyle::Interleaved => {
            let pairs = [tk, heads, half, 2];
            let xp = c.b.reshape(x, f32, s, &pairs);
            let a =
                c.b.slice(&xp, f32, &pairs, &[0, 0, 0, 0], &[tk, heads, half, 1]);
            let b =
                c.b.slice(&xp, f32, &pairs, &[0, 0, 0, 1], &[tk, heads, half, 2]);
            (
                c.b.reshape(&a, f32, &[tk, heads, half, 1], &hs),
                c.b.reshape(&b, f32, &[tk, heads, half, 1], &hs),
            )
        }
    };
    let x1c = c.b.binary("multiply", &x1, &cb, &ht);
    let x2s = c.b.binary("multiply", &x2, &sb, &ht);
    let o1 = c.b.binary("subtract", &x1c, &x2s, &ht);
    let x2c = c.b.binary("multiply", &x2, &cb, &ht);
    let x1s = c.b.binary("multiply", &x1, &sb, &ht);
    let o2 = c.b.binary("add", &x2c, &x1s, &ht);
    match p.style {
        RopeStyle::Neox => {
            c.b.concat(&[&o1, &o2], f32, &[hs.to_vec(), hs.to_vec()], 2, s)
        }
        RopeStyle::Interleaved => {
            let q = [tk, heads, half, 1];
            let a = c.b.reshape(&o1, f32, &hs, &q);
            let b = c.b.reshape(&o2, f32, &hs, &q);
            let both = c.b.concat(
                &[&a, &b],
                f32,
                &[q.to_vec(), q.to_vec()],
                3,
                &[tk, heads, half, 2],
            );
            c.b.reshape(&both, f32, &[tk, heads, half, 2], s)
        }
    }
}

/// Row `query_start_loc[s+1] - 1` of `x` for each sequence; zero when it has none.
fn gather_last(c: &mut Ctx, x: &str, qsl: &str, xs: &[usize], out: &[usize]) -> String {
    let (f32, i32) = (DType::F32, DType::I32);
    let (sn, h, tk) = (out[0], out[1], xs[0]);
    let lo = c.b.slice(qsl, i32, &[sn + 1], &[0], &[sn]);
    let hi = c.b.slice(qsl, i32, &[sn + 1], &[1], &[sn + 1]);
    let one = c.b.splat(1.0, i32, &[sn]);
    let last = c.b.binary("subtract", &hi, &one, &ty(i32, &[sn]));
    let zero = c.b.splat(0.0, i32, &[sn]);
    let max = c.b.splat((tk - 1) as f64, i32, &[sn]);
    let idx = c.b.op(format!(
        "stablehlo.clamp {zero}, {last}, {max} : {}",
        ty(i32, &[sn])
    ));
    let idx2 = c.b.reshape(&idx, i32, &[sn], &[sn, 1]);
    let rows = c.b.op(format!(
        "\"stablehlo.gather\"({x}, {idx2}) {{dimension_numbers = #stablehlo.gather<offset_dims = [1], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, slice_sizes = array<i64: 1, {h}>, indices_are_sorted = false}} : ({}, {}) -> {}",
        ty(f32, xs),
        ty(i32, &[sn, 1]),
        ty(f32, out)
    ));
    let nonempty = c.b.compare("GT", &hi, &lo, i32, &[sn]);
    let tmax = c.b.splat(tk as f64, i32, &[sn]);
    let inside = c.b.compare("LE", &hi, &tmax, i32, &[sn]);
    let ok =
        c.b.binary("and", &nonempty, &inside, &crate::mlir::ty_i1(&[sn]));
    let okb = c.b.op(format!(
        "stablehlo.broadcast_in_dim {ok}, dims = [0] : ({}) -> {}",
        crate::mlir::ty_i1(&[sn]),
        crate::mlir::ty_i1(out)
    ));
    let zeros = c.b.splat(0.0, f32, out);
    c.b.select(&okb, &rows, &zeros, f32, out)
}

/// Index of the first maximum of each row of f32 `x` (NaN never wins).
fn argmax(c: &mut Ctx, x: &str, s: &[usize]) -> String {
    let rows = s[0];
    let iota =
        c.b.op(format!("stablehlo.iota dim = 1 : {}", ty(DType::I32, s)));
    let ninf = c.b.op(format!(
        "stablehlo.constant dense<{}> : tensor<f32>",
        float(f64::NEG_INFINITY)
    ));
    let zero =
        c.b.op("stablehlo.constant dense<0> : tensor<i32>".to_string());
    let r = c.b.fresh();
    // Names inside the reducer: accumulator (av, ai), element (xv, xi), temporaries.
    let [av, ai, xv, xi, gt, eq, lt, tie, pick, sv, si] = [(); 11].map(|()| c.b.fresh());
    c.b.lines.push(format!(
        "    {r}:2 = \"stablehlo.reduce\"({x}, {iota}, {ninf}, {zero}) ({{\n      ^bb0({av}: tensor<f32>, {ai}: tensor<i32>, {xv}: tensor<f32>, {xi}: tensor<i32>):\n        {gt} = stablehlo.compare GT, {xv}, {av} : (tensor<f32>, tensor<f32>) -> tensor<i1>\n        {eq} = stablehlo.compare EQ, {xv}, {av} : (tensor<f32>, tensor<f32>) -> tensor<i1>\n        {lt} = stablehlo.compare LT, {xi}, {ai} : (tensor<i32>, tensor<i32>) -> tensor<i1>\n        {tie} = stablehlo.and {eq}, {lt} : tensor<i1>\n        {pick} = stablehlo.or {gt}, {tie} : tensor<i1>\n        {sv} = stablehlo.select {pick}, {xv}, {av} : tensor<i1>, tensor<f32>\n        {si} = stablehlo.select {pick}, {xi}, {ai} : tensor<i1>, tensor<i32>\n        stablehlo.return {sv}, {si} : tensor<f32>, tensor<i32>\n    }}) {{dimensions = array<i64: 1>}} : ({}, {}, tensor<f32>, tensor<i32>) -> ({}, {})",
        ty(DType::F32, s),
        ty(DType::I32, s),
        ty(DType::F32, &[rows]),
        ty(DType::I32, &[rows])
    ));
    format!("{r}#1")
}

/// Scatters `new` `[T, kv_heads, d]` into `cache` `[blocks, kv_heads, bs, d]` at
/// slot = block * bs + offset; negative slots point past the cache and are skipped.
fn kv_write(c: &mut Ctx, iv: &[ValueId], i: &[String]) -> Result<String> {
    let i32 = DType::I32;
    let (cs, ns) = (c.shape(iv[0]), c.shape(iv[1]));
    let (kd, nd) = (c.dtype(iv[0]), c.dtype(iv[1]));
    let (blocks, bs, tk) = (cs[0], cs[2], ns[0]);
    let new = c.b.convert(&i[1], nd, kd, &ns);
    let it = ty(i32, &[tk]);
    let bsc = c.b.splat(bs as f64, i32, &[tk]);
    let blk = c.b.binary("divide", &i[2], &bsc, &it);
    let off = c.b.binary("remainder", &i[2], &bsc, &it);
    let zero = c.b.splat(0.0, i32, &[tk]);
    let pad = c.b.compare("LT", &i[2], &zero, i32, &[tk]);
    let past = c.b.splat(blocks as f64, i32, &[tk]);
    let blk = c.b.select(&pad, &past, &blk, i32, &[tk]);
    let off = c.b.select(&pad, &zero, &off, i32, &[tk]);
    let b2 = c.b.reshape(&blk, i32, &[tk], &[tk, 1]);
    let o2 = c.b.reshape(&off, i32, &[tk], &[tk, 1]);
    let idx =
        c.b.concat(&[&b2, &o2], i32, &[vec![tk, 1], vec![tk, 1]], 1, &[tk, 2]);
    let (x, y) = (c.b.fresh(), c.b.fresh());
    let e = crate::mlir::elem(kd);
    Ok(c.b.op(format!(
        "\"stablehlo.scatter\"({}, {idx}, {new}) ({{\n      ^bb0({x}: tensor<{e}>, {y}: tensor<{e}>):\n        stablehlo.return {y} : tensor<{e}>\n    }}) {{scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = [1, 2], inserted_window_dims = [0, 2], scatter_dims_to_operand_dims = [0, 2], index_vector_dim = 1>, indices_are_sorted = false, unique_indices = false}} : ({}, {}, {}) -> {}",
        i[0],
        ty(kd, &cs),
        ty(i32, &[tk, 2]),
        ty(kd, &ns),
        ty(kd, &cs)
    )))
}

/// Gathers `x[idx[t]]` for 1-D `x` `[n]` (i32) at each of `idx` `[t]`.
fn gather_1d(c: &mut Ctx, x: &str, n: usize, idx: &str, t: usize) -> String {
    let i32 = DType::I32;
    let idx2 = c.b.reshape(idx, i32, &[t], &[t, 1]);
    c.b.op(format!(
        "\"stablehlo.gather\"({x}, {idx2}) {{dimension_numbers = #stablehlo.gather<collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, slice_sizes = array<i64: 1>, indices_are_sorted = false}} : ({}, {}) -> {}",
        ty(i32, &[n]),
        ty(i32, &[t, 1]),
        ty(i32, &[t])
    ))
}

/// Paged attention as gathers through the block table. For each query row:
/// its sequence (how many sequences end at or before it), its position
/// (`seq_len - (end - row)`), and that sequence's keys gathered from the
/// cache; scores masked to the visible positions (length, causal, window),
/// softcapped, softmaxed; rows of no sequence (padding) come out zero.
fn attention(c: &mut Ctx, iv: &[ValueId], i: &[String], p: &AttentionParams) -> Result<String> {
    let (f32, i32) = (DType::F32, DType::I32);
    let (qs, cs, ts) = (c.shape(iv[0]), c.shape(iv[1]), c.shape(iv[5]));
    let kd = c.dtype(iv[1]);
    let (tk, heads, d) = (qs[0], qs[1], qs[2]);
    let (kvh, bs) = (cs[1], cs[2]);
    let (sn, m) = (ts[0], ts[1]);
    if kvh == 0 || heads % kvh != 0 {
        return Err(Error::invalid(format!(
            "{heads} query heads over {kvh} KV heads"
        )));
    }
    let (g, l) = (heads / kvh, m * bs);
    let (q, kc, vc, qsl, lens, tables) = (&i[0], &i[1], &i[2], &i[3], &i[4], &i[5]);

    // The sequence of each row: count of sequence ends <= row.
    let ends = c.b.slice(qsl, i32, &[sn + 1], &[1], &[sn + 1]);
    let rows =
        c.b.op(format!("stablehlo.iota dim = 0 : {}", ty(i32, &[tk, sn])));
    let endb = c.b.broadcast(&ends, i32, &[sn], &[tk, sn], &[1]);
    let done = c.b.compare("LE", &endb, &rows, i32, &[tk, sn]);
    let donef = c.b.op(format!(
        "stablehlo.convert {done} : ({}) -> {}",
        crate::mlir::ty_i1(&[tk, sn]),
        ty(f32, &[tk, sn])
    ));
    let seqf = c.b.reduce("add", &donef, &[tk, sn], 1);
    let seq = c.b.convert(&seqf, f32, i32, &[tk]);
    let it = ty(i32, &[tk]);
    let last = c.b.splat((sn.max(1) - 1) as f64, i32, &[tk]);
    let zero = c.b.splat(0.0, i32, &[tk]);
    let seqc =
        c.b.op(format!("stablehlo.clamp {zero}, {seq}, {last} : {it}"));
    let nseq = c.b.splat(sn as f64, i32, &[tk]);
    let real = c.b.compare("LT", &seq, &nseq, i32, &[tk]);
    // Position of each row, and its sequence's length.
    let end = gather_1d(c, &ends, sn, &seqc, tk);
    let len = gather_1d(c, lens, sn, &seqc, tk);
    let row = c.b.op(format!("stablehlo.iota dim = 0 : {it}"));
    let back = c.b.binary("subtract", &end, &row, &it);
    let pos = c.b.binary("subtract", &len, &back, &it);

    // Each row's sequence's block table, then its keys and values.
    let seq2 = c.b.reshape(&seqc, i32, &[tk], &[tk, 1]);
    let table = c.b.op(format!(
        "\"stablehlo.gather\"({tables}, {seq2}) {{dimension_numbers = #stablehlo.gather<offset_dims = [1], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, slice_sizes = array<i64: 1, {m}>, indices_are_sorted = false}} : ({}, {}) -> {}",
        ty(i32, &ts),
        ty(i32, &[tk, 1]),
        ty(i32, &[tk, m])
    ));
    let table3 = c.b.reshape(&table, i32, &[tk, m], &[tk, m, 1]);
    let mut per_row = |cache: &str| {
        let gathered = [tk, m, kvh, bs, d];
        let x = c.b.op(format!(
            "\"stablehlo.gather\"({cache}, {table3}) {{dimension_numbers = #stablehlo.gather<offset_dims = [2, 3, 4], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 2>, slice_sizes = array<i64: 1, {kvh}, {bs}, {d}>, indices_are_sorted = false}} : ({}, {}) -> {}",
            ty(kd, &cs),
            ty(i32, &[tk, m, 1]),
            ty(kd, &gathered)
        ));
        let x = c.b.convert(&x, kd, f32, &gathered);
        let x = c.b.op(format!(
            "stablehlo.transpose {x}, dims = [0, 2, 1, 3, 4] : ({}) -> {}",
            ty(f32, &gathered),
            ty(f32, &[tk, kvh, m, bs, d])
        ));
        c.b.reshape(&x, f32, &[tk, kvh, m, bs, d], &[tk, kvh, l, d])
    };
    let k = per_row(kc);
    let v = per_row(vc);

    // Scores [T, kv_heads, group, L].
    let sshape = [tk, kvh, g, l];
    let st = ty(f32, &sshape);
    let q4 = c.b.reshape(q, f32, &qs, &[tk, kvh, g, d]);
    let s = c.b.op(format!(
        "stablehlo.dot_general {q4}, {k}, batching_dims = [0, 1] x [0, 1], contracting_dims = [3] x [3] : ({}, {}) -> {st}",
        ty(f32, &[tk, kvh, g, d]),
        ty(f32, &[tk, kvh, l, d])
    ));
    let scale = c.b.splat(p.scale as f64, f32, &sshape);
    let mut s = c.b.binary("multiply", &s, &scale, &st);
    if let Some(cap) = p.softcap {
        let capc = c.b.splat(cap as f64, f32, &sshape);
        let x = c.b.binary("divide", &s, &capc, &st);
        let x = c.b.unary("tanh", &x, &st);
        s = c.b.binary("multiply", &x, &capc, &st);
    }

    // Visible keys [T, L]: j < len, j <= pos (causal), j > pos - window, real row.
    let ml = [tk, l];
    let b1 = crate::mlir::ty_i1(&ml);
    let j = c.b.op(format!("stablehlo.iota dim = 1 : {}", ty(i32, &ml)));
    let lenb = c.b.broadcast(&len, i32, &[tk], &ml, &[0]);
    let mut vis = c.b.compare("LT", &j, &lenb, i32, &ml);
    let posb = c.b.broadcast(&pos, i32, &[tk], &ml, &[0]);
    if p.causal {
        let before = c.b.compare("LE", &j, &posb, i32, &ml);
        vis = c.b.binary("and", &vis, &before, &b1);
    }
    if let Some(w) = p.sliding_window.filter(|&w| w > 0) {
        let wc = c.b.splat(w as f64, i32, &ml);
        let lo = c.b.binary("subtract", &posb, &wc, &ty(i32, &ml));
        let inside = c.b.compare("GT", &j, &lo, i32, &ml);
        vis = c.b.binary("and", &vis, &inside, &b1);
    }
    let realb = c.b.op(format!(
        "stablehlo.broadcast_in_dim {real}, dims = [0] : ({}) -> {b1}",
        crate::mlir::ty_i1(&[tk])
    ));
    vis = c.b.binary("and", &vis, &realb, &b1);
    let visb = c.b.op(format!(
        "stablehlo.broadcast_in_dim {vis}, dims = [0, 3] : ({b1}) -> {}",
        crate::mlir::ty_i1(&sshape)
    ));
    let ninf = c.b.splat(f64::NEG_INFINITY, f32, &sshape);
    let s = c.b.select(&visb, &s, &ninf, f32, &sshape);

    // Softmax over L; rows with nothing visible give zeros, not NaN.
    let r3 = [tk, kvh, g];
    let mx = c.b.reduce("maximum", &s, &sshape, 3);
    let ninf3 = c.b.splat(f64::NEG_INFINITY, f32, &r3);
    let empty = c.b.compare("EQ", &mx, &ninf3, f32, &r3);
    let zero3 = c.b.splat(0.0, f32, &r3);
    let mx = c.b.select(&empty, &zero3, &mx, f32, &r3);
    let mxb = c.b.broadcast(&mx, f32, &r3, &sshape, &[0, 1, 2]);
    let sh = c.b.binary("subtract", &s, &mxb, &st);
    let e = c.b.unary("exponential", &sh, &st);
    let sum = c.b.reduce("add", &e, &sshape, 3);
    let pos_sum = c.b.compare("GT", &sum, &zero3, f32, &r3);
    let one3 = c.b.splat(1.0, f32, &r3);
    let safe = c.b.select(&pos_sum, &sum, &one3, f32, &r3);
    let inv = c.b.binary("divide", &one3, &safe, &ty(f32, &r3));
    let inv = c.b.select(&pos_sum, &inv, &zero3, f32, &r3);
    let invb = c.b.broadcast(&inv, f32, &r3, &sshape, &[0, 1, 2]);
    let pr = c.b.binary("multiply", &e, &invb, &st);

    let o = c.b.op(format!(
        "stablehlo.dot_general {pr}, {v}, batching_dims = [0, 1] x [0, 1], contracting_dims = [3] x [2] : ({st}, {}) -> {}",
        ty(f32, &[tk, kvh, l, d]),
        ty(f32, &[tk, kvh, g, d])
    ));
    Ok(c.b.reshape(&o, f32, &[tk, kvh, g, d], &qs))
}
