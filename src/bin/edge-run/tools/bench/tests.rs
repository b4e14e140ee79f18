use super::*;

#[test]
fn roofline_percent() {
    // 100 tok/s × 100 MB/token = 10 GB/s = 50 % of 20 GB/s.
    assert!((roofline_pct(100.0, 100e6, 20.0) - 50.0).abs() < 1e-9);
}

#[test]
fn workload_prompt_and_context() {
    let w = Workload {
        n_prompt: 10,
        n_gen: 4,
        ..Default::default()
    };
    let p = w.prompt(50);
    assert_eq!(p.len(), 10);
    assert!(p.iter().all(|&t| t < 50));
    assert_eq!(p, w.prompt(50), "the prompt is reproducible");
    assert_ne!(
        p,
        Workload {
            seed: 99,
            ..w.clone()
        }
        .prompt(50)
    );
    // Decoded tokens attend to 11, 12, 13, 14 positions.
    assert_eq!(w.mean_context(), 12.5);
    assert!(Workload {
        n_gen: 0,
        ..w.clone()
    }
    .validate()
    .is_err());
    assert!(w.validate().is_ok());
    let c = w.session_config(&SessionConfig {
        n_ctx: 8,
        n_batch: 4,
        ..Default::default()
    });
    assert_eq!((c.n_ctx, c.n_batch), (14, 10));
}
