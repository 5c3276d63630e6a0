//! Untrusted `.aic` files: header and packet parsing never panic; packets stay within bounds;
//! the stream reader (`PacketReader`, what `aic decode` uses) reads exactly what the slice
//! reader reads, header verdicts and errors included.
//!
//! Input: one config byte, then the bytes. Bit 0 clear: the bytes are a whole file (either
//! container version). Bit 0 set: the bytes are what follows a valid version-2 header (pages),
//! so the page parser is reached without the fuzzer having to forge a header CRC.
#![no_main]

use aic_codec::bitstream::container::{self, Header, MAX_PACKET_BYTES, PacketReader};
use aic_codec::{CodecInfo, OperatingPoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, rest)) = input.split_first() else {
        return;
    };
    let mut owned = Vec::new();
    let data = if cfg & 1 == 1 {
        let h = Header {
            info: CodecInfo {
                codec: "aic".into(),
                model_id: "fuzz".into(),
                sample_rate: 16_000,
                frame_samples: 320,
                delay_samples: 0,
                point: OperatingPoint::Level(2),
            },
            total_samples: 0,
        };
        h.write_version(container::VERSION_2, &mut owned)
            .expect("a valid header");
        owned.extend_from_slice(rest);
        &owned[..]
    } else {
        rest
    };
    let stream = PacketReader::new(data);
    match container::read(data) {
        Ok((h, packets)) => {
            let mut again = Vec::new();
            h.write(&mut again)
                .expect("a header that parsed must serialise");
            assert_eq!(container::read(&again).unwrap().0, h);
            let mut stream = stream.expect("the stream reader accepts the same header");
            assert_eq!(stream.header(), &h);
            for p in packets {
                let s = stream
                    .next_packet()
                    .expect("as many packets from the stream");
                assert_eq!(s, p);
                match p {
                    Ok(Some(p)) => assert!(!p.is_empty() && p.len() <= MAX_PACKET_BYTES),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
            assert!(stream.next_packet().is_none());
        }
        Err(e) => assert_eq!(stream.unwrap_err(), e),
    }
});
