//! The whole conformance suite (ops, models, engine) on the cpu backend.
tessera_conformance::backend_suite!(tessera_cpu::BACKEND_NAME);
