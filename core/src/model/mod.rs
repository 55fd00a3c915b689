//! Models: configs, weight sources (HF safetensors, GGUF, random), tokenizers,
//! chat templates, and the Llama-family forward pass.

pub mod config;
pub mod llama;
pub mod weights;
