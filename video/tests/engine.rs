//! The transcoder (publisher packets → receivers' packets) and its fallbacks.

mod common;

use std::process::Command;

use aic_video::engine::{TranscodeConfig, Transcoder};
use aic_video::file::read_packets;
use aic_video::metrics::psnr_y;
use aic_video::{
    EncodedPacket, EncoderConfig, EncoderKind, FrameHints, QualityMap, VideoCodec, VideoDecoder,
    VideoEncoder, Yuv420Frame,
};

/// What a browser would publish: VP8 realtime packets of the frames.
fn publish_vp8(frames: &[Yuv420Frame]) -> Vec<EncodedPacket> {
    let cfg = EncoderConfig::new(
        EncoderKind::Vp8,
        frames[0].width,
        frames[0].height,
        30,
        600_000,
    );
    let mut enc = VideoEncoder::new(cfg).unwrap();
    let mut out = Vec::new();
    for f in frames {
        enc.encode(f, &FrameHints::default(), &mut out).unwrap();
    }
    enc.flush(&mut out).unwrap();
    out
}

fn config(output: EncoderKind) -> TranscodeConfig {
    TranscodeConfig {
        input: VideoCodec::Vp8,
        output,
        fps: 30,
        bitrate_bps: 200_000,
        roi: false,
    }
}

fn decode(codec: VideoCodec, packets: &[EncodedPacket]) -> Vec<Yuv420Frame> {
    let mut d = VideoDecoder::new(codec).unwrap();
    let mut out = Vec::new();
    for p in packets {
        d.decode(&p.data, &mut out).unwrap();
    }
    d.flush(&mut out).unwrap();
    out
}

#[test]
fn vp8_in_av1_out_with_a_quality_map() {
    let clip = common::qcif(1.0);
    let published = publish_vp8(&clip.frames);
    let mut t = Transcoder::new(TranscodeConfig {
        roi: true,
        ..config(EncoderKind::Av1)
    })
    .unwrap();
    let map = QualityMap::centre_weighted(176, 144, 16, 0.5, -16, 16).unwrap();
    let mut out = Vec::new();
    for p in &published {
        let step = t.push(
            &p.data,
            &FrameHints {
                quality: Some(&map),
                ..FrameHints::default()
            },
            &mut out,
        );
        assert_eq!(step, Default::default());
    }
    let s = t.stats();
    assert_eq!(
        (
            s.packets_in,
            s.frames_decoded,
            s.frames_encoded,
            s.encoder_opens
        ),
        (30, 30, 30, 1)
    );
    assert_eq!((s.decode_errors, s.hints_dropped, s.forwarded), (0, 0, 0));
    let back = decode(VideoCodec::Av1, &out);
    assert_eq!(back.len(), 30);
    let psnr = clip
        .frames
        .iter()
        .zip(&back)
        .map(|(a, b)| psnr_y(a, b))
        .sum::<f64>()
        / 30.0;
    assert!(psnr > 28.0, "PSNR-Y {psnr:.2} dB through VP8 then AV1");
}

#[test]
fn damage_asks_for_a_keyframe_and_the_stream_goes_on() {
    let clip = common::qcif(1.0);
    let published = publish_vp8(&clip.frames);
    let mut t = Transcoder::new(config(EncoderKind::Av1)).unwrap();
    let mut out = Vec::new();
    let mut requests = 0;
    for (i, p) in published.iter().enumerate() {
        let data = if i == 10 {
            p.data[..2].to_vec()
        } else {
            p.data.clone()
        };
        let step = t.push(&data, &FrameHints::default(), &mut out);
        assert!(!step.forward);
        requests += usize::from(step.request_keyframe);
    }
    // An empty packet and garbage: errors, never panics.
    assert!(
        t.push(&[], &FrameHints::default(), &mut out)
            .request_keyframe
    );
    assert!(
        t.push(&[0xff; 64], &FrameHints::default(), &mut out)
            .request_keyframe
    );
    let s = t.stats();
    assert!(requests >= 1 && s.decode_errors >= 3, "{s:?}");
    assert_eq!(s.keyframe_requests, s.decode_errors);
    assert!(s.frames_encoded >= 20, "{s:?}");
    assert_eq!(decode(VideoCodec::Av1, &out).len() as u64, s.frames_encoded);
}

/// A publisher that switches codec mid-stream (VP8 → H.264 packets into a VP8 stream): each
/// foreign packet is a counted decode error with a keyframe request, nothing panics, and the
/// stream carries on as soon as VP8 comes back with a keyframe.
#[test]
fn a_codec_switched_mid_stream_is_counted_and_asks_for_a_keyframe() {
    let clip = common::qcif(1.0);
    let half = clip.frames.len() / 2;
    let vp8 = publish_vp8(&clip.frames[..half]);
    let vp8_again = publish_vp8(&clip.frames[half..]);
    let mut x264 = VideoEncoder::new(EncoderConfig::new(
        EncoderKind::X264,
        clip.frames[0].width,
        clip.frames[0].height,
        30,
        300_000,
    ))
    .unwrap();
    let mut h264 = Vec::new();
    for f in &clip.frames[..10] {
        x264.encode(f, &FrameHints::default(), &mut h264).unwrap();
    }
    x264.flush(&mut h264).unwrap();
    assert!(!h264.is_empty());
    let mut t = Transcoder::new(config(EncoderKind::Av1)).unwrap();
    let mut out = Vec::new();
    for p in &vp8 {
        assert!(
            !t.push(&p.data, &FrameHints::default(), &mut out)
                .request_keyframe
        );
    }
    let before = t.stats();
    let mut requests = 0;
    for p in &h264 {
        let step = t.push(&p.data, &FrameHints::default(), &mut out);
        assert!(!step.forward, "a foreign packet is not an encoder failure");
        requests += usize::from(step.request_keyframe);
    }
    let during = t.stats();
    assert!(
        requests >= 1 && during.decode_errors > before.decode_errors,
        "H.264 inside a VP8 stream went unnoticed: {during:?}"
    );
    assert_eq!(during.keyframe_requests, during.decode_errors);
    // VP8 again, starting with its keyframe: the picture moves on.
    for p in &vp8_again {
        t.push(&p.data, &FrameHints::default(), &mut out);
    }
    let after = t.stats();
    assert!(
        after.frames_encoded >= during.frames_encoded + vp8_again.len() as u64 - 1,
        "the stream did not resume after the switch back: {after:?}"
    );
    assert_eq!(
        decode(VideoCodec::Av1, &out).len() as u64,
        after.frames_encoded
    );
}

#[test]
fn a_new_picture_size_reopens_the_encoder_and_stale_maps_are_dropped() {
    let small = common::qcif(0.5);
    let p = common::lavfi_clip("testsrc2-cif", "testsrc2=size=352x288:rate=30", 0.5);
    let large = aic_video::file::read_video(&p, None).unwrap();
    let mut published = publish_vp8(&small.frames);
    published.extend(publish_vp8(&large.frames));
    let mut t = Transcoder::new(config(EncoderKind::Vp9)).unwrap();
    let qcif_map = QualityMap::centre_weighted(176, 144, 16, 0.5, -16, 16).unwrap();
    let mut out = Vec::new();
    for p in &published {
        t.push(
            &p.data,
            &FrameHints {
                quality: Some(&qcif_map),
                ..FrameHints::default()
            },
            &mut out,
        );
    }
    let s = t.stats();
    assert_eq!(
        (s.frames_encoded, s.encoder_opens, s.hints_dropped),
        (30, 2, 15),
        "{s:?}"
    );
    let back = decode(VideoCodec::Vp9, &out);
    assert_eq!(back.len(), 30);
    assert_eq!((back[29].width, back[29].height), (352, 288));
}

#[test]
fn an_encoder_that_cannot_serve_the_stream_turns_it_into_forwarding() {
    // A 48x48 publisher (a thumbnail): SVT-AV1 refuses pictures under 64x64, so the
    // receivers get the publisher's VP8 as it came. The clip is made by ffmpeg's own libvpx
    // and read back as packets, as a recorded publisher would be.
    let dir = tempfile::tempdir().unwrap();
    let ivf = dir.path().join("thumb.ivf");
    let ok = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
        ])
        .args([
            "-i",
            "testsrc2=size=48x48:rate=30",
            "-t",
            "0.3",
            "-c:v",
            "libvpx",
            "-b:v",
            "100k",
        ])
        .arg(&ivf)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let (codec, packets) = read_packets(&ivf, None).unwrap();
    assert_eq!((codec, packets.len()), (VideoCodec::Vp8, 9));
    let mut t = Transcoder::new(config(EncoderKind::Av1Svt)).unwrap();
    let mut out = Vec::new();
    let steps: Vec<_> = packets
        .iter()
        .map(|p| t.push(p, &FrameHints::default(), &mut out))
        .collect();
    assert!(
        steps.iter().all(|s| s.forward && !s.request_keyframe),
        "{steps:?}"
    );
    assert!(out.is_empty());
    let s = t.stats();
    assert_eq!((s.forwarded, s.frames_encoded), (9, 0), "{s:?}");
    assert!(
        t.fallback_reason().unwrap().contains("open encoder"),
        "{:?}",
        t.fallback_reason()
    );
}
