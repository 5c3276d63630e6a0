//! Untrusted `.aic` files: header and packet parsing never panic; packets stay within bounds;
//! the stream reader (`PacketReader`, what `aic decode` uses) reads exactly what the slice
//! reader reads, header verdicts and errors included.
#![no_main]

use aic_codec::bitstream::container::{self, MAX_PACKET_BYTES, PacketReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let stream = PacketReader::new(data);
    match container::read(data) {
        Ok((h, packets)) => {
            let mut again = Vec::new();
            h.write(&mut again).expect("a header that parsed must serialise");
            assert_eq!(container::read(&again).unwrap().0, h);
            let mut stream = stream.expect("the stream reader accepts the same header");
            assert_eq!(stream.header(), &h);
            for p in packets {
                let s = stream.next_packet().expect("as many packets from the stream");
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
