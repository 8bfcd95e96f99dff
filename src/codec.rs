//! Helpers shared by the format drivers that compress data (qcow2 compressed clusters,
//! streamOptimized VMDK grains): the test that tells whether deflate is worth running.

/// Whether `data` is statistically indistinguishable from random bytes, so that deflate
/// cannot make it smaller (zstd finds that out quickly by itself; deflate at level 6 spends
/// as long on random data as on text).
///
/// The test is Pearson's chi-square of the byte histogram against the uniform one: random
/// data gives 255 ± 23. Anything deflate can shrink fails it: a skewed histogram (text,
/// code, tables) lands far above, and repeats within the 4 KiB window multiply the
/// histogram's deviations and land above too, while counters and other too-regular data
/// land far below. Only the band of six standard deviations around 255 is called random.
/// Clusters under 4 KiB are always compressed (the statistic is too noisy there).
pub fn looks_random(data: &[u8]) -> bool {
    if data.len() < 4096 {
        return false;
    }
    let mut counts = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        counts[0][q[0] as usize] += 1;
        counts[1][q[1] as usize] += 1;
        counts[2][q[2] as usize] += 1;
        counts[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        counts[0][b as usize] += 1;
    }
    let expected = data.len() as f64 / 256.0;
    let chi2: f64 = (0..256)
        .map(|i| {
            let n = f64::from(counts[0][i] + counts[1][i] + counts[2][i] + counts[3][i]);
            (n - expected) * (n - expected) / expected
        })
        .sum();
    (120.0..390.0).contains(&chi2)
}
