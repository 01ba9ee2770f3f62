//! FLAC with `flacenc` (pure Rust, the reference encoder's methods), 16 bits, its default
//! settings, on the calling thread.

use anyhow::anyhow;
use flacenc::component::BitRepr;
use flacenc::error::Verify;

pub(super) fn encode(samples: &[i16], rate: u32) -> anyhow::Result<Vec<u8>> {
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| anyhow!("FLAC settings: {e}"))?;
    let samples: Vec<i32> = samples.iter().map(|&s| i32::from(s)).collect();
    let source = flacenc::source::MemSource::from_samples(&samples, 1, 16, rate as usize);
    let mut stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size)
        .map_err(|e| anyhow!("FLAC: {e}"))?;
    // flacenc records the short last block as the minimum block size, which marks the stream as
    // variable-size while its frames are numbered as fixed-size ones; decoders that check (such
    // as symphonia) then find no frame. libFLAC writes the fixed size as both bounds.
    let info = stream.stream_info_mut();
    let block = info.max_block_size();
    info.set_block_sizes(block, block)
        .map_err(|e| anyhow!("FLAC: {e}"))?;
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).map_err(|e| anyhow!("FLAC: {e}"))?;
    Ok(sink.into_inner())
}
