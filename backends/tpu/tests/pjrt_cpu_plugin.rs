//! The PJRT layer against the XLA CPU plugin (scripts/fetch-pjrt-plugin.sh
//! fetches it): a StableHLO program compiled and run, buffers round-tripped,
//! an input donated to an output, and errors returned as values.

mod common;

use common::plugin_path;
use tessera_core::DType;
use tessera_tpu::pjrt::{Client, Plugin};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const ADD: &str = r#"
func.func @main(%a: tensor<2x3xf32>, %b: tensor<2x3xf32>) -> tensor<2x3xf32> {
  %0 = stablehlo.add %a, %b : tensor<2x3xf32>
  return %0 : tensor<2x3xf32>
}
"#;

/// Writes `new` into row `row` of `cache` in place: the cache is donated.
const UPDATE: &str = r#"
func.func @main(%cache: tensor<4x2xf32> {tf.aliasing_output = 0 : i32}, %new: tensor<1x2xf32>, %row: tensor<i32>) -> tensor<4x2xf32> {
  %zero = stablehlo.constant dense<0> : tensor<i32>
  %0 = stablehlo.dynamic_update_slice %cache, %new, %row, %zero : (tensor<4x2xf32>, tensor<1x2xf32>, tensor<i32>, tensor<i32>) -> tensor<4x2xf32>
  return %0 : tensor<4x2xf32>
}
"#;

#[test]
fn compiles_runs_donates_and_reports_errors() {
    let plugin = Plugin::load(&plugin_path()).expect("load the plugin");
    assert_eq!(plugin.version.0, 0);
    let client = Client::new(plugin.clone()).expect("client");
    assert_eq!(client.platform_name().expect("name"), "cpu");
    assert!(client.num_devices() >= 1);

    let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let b = [0.5f32, -1.0, 10.0, 0.25, 0.0, -6.0];
    let ba = client
        .upload(&f32_bytes(&a), DType::F32, &[2, 3], 0)
        .expect("upload a");
    let bb = client
        .upload(&f32_bytes(&b), DType::F32, &[2, 3], 0)
        .expect("upload b");
    assert_eq!(ba.dims().expect("dims"), [2, 3]);
    assert_eq!(ba.dtype().expect("dtype"), DType::F32);

    let add = client.compile(ADD).expect("compile add");
    assert_eq!(add.num_outputs(), 1);
    let out = add.execute(&[&ba, &bb]).expect("execute");
    let mut host = vec![0u8; 24];
    out[0].download(&mut host).expect("download");
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(f32s(&host), want);
    assert!(
        !ba.is_deleted().expect("state"),
        "add must not consume its inputs"
    );

    // Donation: the cache buffer is consumed and the output takes its place,
    // which is how the KV cache will stay on the device without copies.
    let cache = client
        .upload(&f32_bytes(&[0.0; 8]), DType::F32, &[4, 2], 0)
        .expect("cache");
    let new = client
        .upload(&f32_bytes(&[7.0, 8.0]), DType::F32, &[1, 2], 0)
        .expect("new");
    let row = client
        .upload(&2i32.to_le_bytes(), DType::I32, &[], 0)
        .expect("row");
    let update = client.compile(UPDATE).expect("compile update");
    let out = update
        .execute(&[&cache, &new, &row])
        .expect("execute update");
    assert!(
        cache.is_deleted().expect("state"),
        "the donated cache should be consumed"
    );
    let mut host = vec![0u8; 32];
    out[0].download(&mut host).expect("download");
    assert_eq!(f32s(&host), [0.0, 0.0, 0.0, 0.0, 7.0, 8.0, 0.0, 0.0]);

    // Errors are values with the plugin's message, and the client stays usable.
    let e = client
        .compile("this is not MLIR")
        .err()
        .expect("garbage must not compile");
    assert!(e.to_string().contains("PJRT_Client_Compile failed"), "{e}");
    let e = client
        .upload(&[0u8; 3], DType::F32, &[1], 0)
        .err()
        .expect("size mismatch");
    assert!(e.to_string().contains("bytes"), "{e}");
    let e = client
        .upload(&[0u8; 4], DType::F32, &[1], 99)
        .err()
        .expect("no device 99");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let mut small = vec![0u8; 4];
    assert!(out[0].download(&mut small).is_err());
    let again = add.execute(&[&ba, &bb]).expect("still usable");
    assert_eq!(again.len(), 1);
}

#[test]
fn executables_serialize_and_load_back() {
    let plugin = Plugin::load(&plugin_path()).expect("load the plugin");
    let client = Client::new(plugin).expect("client");
    let add = client.compile(ADD).expect("compile");
    let bytes = add.serialize().expect("serialize");
    assert!(!bytes.is_empty());
    let again = client.load_serialized(&bytes).expect("load");
    let a = client
        .upload(&f32_bytes(&[1.0; 6]), DType::F32, &[2, 3], 0)
        .expect("a");
    let out = again.execute(&[&a, &a]).expect("execute");
    let mut host = vec![0u8; 24];
    out[0].download(&mut host).expect("download");
    assert_eq!(f32s(&host), [2.0; 6]);
    assert!(client.load_serialized(b"not an executable").is_err());
}
