//! A small writer of StableHLO text: fresh SSA names, tensor types, and the
//! generic forms of the ops whose pretty syntax varies between versions.

use tessera_core::DType;

pub fn elem(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::I32 => "i32",
    }
}

/// `tensor<2x3xf32>`, `tensor<f32>` for a scalar.
pub fn ty(d: DType, shape: &[usize]) -> String {
    let mut s = String::from("tensor<");
    for x in shape {
        s.push_str(&format!("{x}x"));
    }
    s.push_str(elem(d));
    s.push('>');
    s
}

/// An MLIR float literal (always with a dot and an exponent).
pub fn float(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 {
            "0x7F800000".into()
        } else {
            "0xFF800000".into()
        };
    }
    format!("{x:.9e}")
}

fn dims(v: &[usize]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One function body under construction.
#[derive(Default)]
pub struct Body {
    pub lines: Vec<String>,
    next: usize,
}

impl Body {
    pub fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%t{}", self.next)
    }

    /// `%r = <rhs>`; returns `%r`.
    pub fn op(&mut self, rhs: String) -> String {
        let r = self.fresh();
        self.lines.push(format!("    {r} = {rhs}"));
        r
    }

    pub fn binary(&mut self, name: &str, a: &str, b: &str, t: &str) -> String {
        self.op(format!("stablehlo.{name} {a}, {b} : {t}"))
    }

    pub fn unary(&mut self, name: &str, a: &str, t: &str) -> String {
        self.op(format!("stablehlo.{name} {a} : {t}"))
    }

    /// A constant filled with `x`.
    pub fn splat(&mut self, x: f64, d: DType, shape: &[usize]) -> String {
        let lit = if d == DType::I32 {
            format!("{}", x as i64)
        } else {
            float(x)
        };
        self.op(format!(
            "stablehlo.constant dense<{lit}> : {}",
            ty(d, shape)
        ))
    }

    pub fn convert(&mut self, a: &str, from: DType, to: DType, shape: &[usize]) -> String {
        if from == to {
            return a.to_string();
        }
        self.op(format!(
            "stablehlo.convert {a} : ({}) -> {}",
            ty(from, shape),
            ty(to, shape)
        ))
    }

    pub fn reshape(&mut self, a: &str, d: DType, from: &[usize], to: &[usize]) -> String {
        self.op(format!(
            "stablehlo.reshape {a} : ({}) -> {}",
            ty(d, from),
            ty(d, to)
        ))
    }

    /// Broadcasts `a` (shape `from`) into `to`; `map[i]` is the output dim of input dim i.
    pub fn broadcast(
        &mut self,
        a: &str,
        d: DType,
        from: &[usize],
        to: &[usize],
        map: &[usize],
    ) -> String {
        self.op(format!(
            "stablehlo.broadcast_in_dim {a}, dims = [{}] : ({}) -> {}",
            dims(map),
            ty(d, from),
            ty(d, to)
        ))
    }

    pub fn slice(
        &mut self,
        a: &str,
        d: DType,
        shape: &[usize],
        start: &[usize],
        limit: &[usize],
    ) -> String {
        let out: Vec<usize> = start.iter().zip(limit).map(|(s, l)| l - s).collect();
        let ones = vec![1usize; shape.len()];
        self.op(format!(
            "\"stablehlo.slice\"({a}) {{start_indices = array<i64: {}>, limit_indices = array<i64: {}>, strides = array<i64: {}>}} : ({}) -> {}",
            dims(start),
            dims(limit),
            dims(&ones),
            ty(d, shape),
            ty(d, &out)
        ))
    }

    pub fn concat(
        &mut self,
        parts: &[&str],
        d: DType,
        shapes: &[Vec<usize>],
        dim: usize,
        out: &[usize],
    ) -> String {
        let tys: Vec<String> = shapes.iter().map(|s| ty(d, s)).collect();
        self.op(format!(
            "\"stablehlo.concatenate\"({}) {{dimension = {dim} : i64}} : ({}) -> {}",
            parts.join(", "),
            tys.join(", "),
            ty(d, out)
        ))
    }

    pub fn compare(&mut self, dir: &str, a: &str, b: &str, d: DType, shape: &[usize]) -> String {
        self.op(format!(
            "stablehlo.compare {dir}, {a}, {b} : ({}, {}) -> {}",
            ty(d, shape),
            ty(d, shape),
            ty_i1(shape)
        ))
    }

    pub fn select(&mut self, c: &str, a: &str, b: &str, d: DType, shape: &[usize]) -> String {
        self.op(format!(
            "stablehlo.select {c}, {a}, {b} : {}, {}",
            ty_i1(shape),
            ty(d, shape)
        ))
    }

    /// Sum (`add`) or max of f32 `a` over `dim`.
    pub fn reduce(&mut self, kind: &str, a: &str, shape: &[usize], dim: usize) -> String {
        let init = if kind == "maximum" {
            float(f64::NEG_INFINITY)
        } else {
            float(0.0)
        };
        let i = self.op(format!("stablehlo.constant dense<{init}> : tensor<f32>"));
        let out: Vec<usize> = shape
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != dim)
            .map(|(_, &x)| x)
            .collect();
        let (x, y, z) = (self.fresh(), self.fresh(), self.fresh());
        self.op(format!(
            "\"stablehlo.reduce\"({a}, {i}) ({{\n      ^bb0({x}: tensor<f32>, {y}: tensor<f32>):\n        {z} = stablehlo.{kind} {x}, {y} : tensor<f32>\n        stablehlo.return {z} : tensor<f32>\n    }}) {{dimensions = array<i64: {dim}>}} : ({}, tensor<f32>) -> {}",
            ty(DType::F32, shape),
            ty(DType::F32, &out)
        ))
    }
}

pub fn ty_i1(shape: &[usize]) -> String {
    let mut s = String::from("tensor<");
    for x in shape {
        s.push_str(&format!("{x}x"));
    }
    s.push_str("i1>");
    s
}
