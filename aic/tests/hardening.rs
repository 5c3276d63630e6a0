//! A hostile or careless client against the real `aic serve` on loopback: timeouts, bounded
//! numbers and strings, size limits with gRPC's status codes, fair sharing of the pipeline's
//! slots between tenants, the authentication-failure limit, TLS and mutual TLS, both reflection
//! versions, and SIGTERM cutting sessions at the end of the grace period. Every test runs under
//! a deadline that fails it with the server's log.

mod support;

use std::time::{Duration, Instant};

use aic_proto::v1 as pb;
use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::control_service_client::ControlServiceClient;
use aic_proto::v1::{
    DecodeOpen, DecodeRequest, EncodeOpen, EncodeRequest, decode_request, encode_request,
    encode_response,
};
use support::{Server, card_stoi, speech_frames, speech_pcm, stoi_i16};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn open_with(level: u32, reference_opus_kbps: u32, codec: &str) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: codec.into(),
            level,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps,
            model_id: String::new(),
            egress_key: String::new(),
        })),
    }
}

fn enc_open(level: u32) -> EncodeRequest {
    open_with(level, 0, "aic")
}

fn pcm(b: Vec<u8>) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::PcmS16le(b)),
    }
}

fn with_key<T>(key: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

/// Encodes `frames` of speech at `level`, decodes the result; STOI of the round trip against
/// the input (decoder delay removed).
async fn round_trip_stoi(
    c: &mut CodecServiceClient<Channel>,
    key: Option<&str>,
    level: u32,
) -> f64 {
    let frames = 100;
    let mut reqs = vec![enc_open(level)];
    reqs.extend(speech_frames(frames).into_iter().map(pcm));
    let mut enc: Vec<_> = c
        .encode_stream(with_key(key, tokio_stream::iter(reqs)))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    enc.sort_by_key(|r| r.seq);
    assert_eq!(enc.len(), frames);
    let aic: Vec<Vec<u8>> = enc
        .into_iter()
        .map(|r| match r.frame.unwrap() {
            encode_response::Frame::Aic(b) => b,
            encode_response::Frame::OpusFallback(_) => Vec::new(), // concealed on decode
        })
        .collect();
    let mut reqs = vec![DecodeRequest {
        msg: Some(decode_request::Msg::Open(DecodeOpen {
            codec: "aic".into(),
            sample_rate: 16_000,
            ..Default::default()
        })),
    }];
    reqs.extend(aic.into_iter().map(|b| DecodeRequest {
        msg: Some(decode_request::Msg::Aic(b)),
    }));
    let mut dec: Vec<_> = c
        .decode_stream(with_key(key, tokio_stream::iter(reqs)))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    dec.sort_by_key(|r| r.seq);
    let out: Vec<i16> = dec
        .iter()
        .flat_map(|r| {
            r.pcm_s16le
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
        })
        .collect();
    stoi_i16(&speech_pcm(frames), &out, 240)
}

/// Opens a session with `open` and nothing else; the status that ends it (or its first frame).
async fn first_result(
    c: &mut CodecServiceClient<Channel>,
    reqs: Vec<EncodeRequest>,
) -> Result<Vec<pb::EncodeResponse>, tonic::Status> {
    c.encode_stream(tokio_stream::iter(reqs))
        .await?
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_bounds_and_size_limits() {
    let srv = Server::start(&[
        "--auth",
        "off",
        "--max-streams",
        "2",
        "--workers",
        "1",
        "--first-message-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "2",
    ]);
    srv.within(240, "timeouts_bounds_and_size_limits", async {
        let mut c = CodecServiceClient::connect(srv.url()).await.unwrap();

        // A stream that never sends `open` is ended after the first-message timeout.
        let (tx, rx) = mpsc::channel::<EncodeRequest>(4);
        let t0 = Instant::now();
        let e = c.encode_stream(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        drop(tx);

        // Two open-only sessions hold both slots; a third is refused, naming the one slot count.
        let mut held = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel(4);
            tx.send(enc_open(6)).await.unwrap();
            let resp = c
                .encode_stream(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            held.push((tx, resp));
        }
        let e = first_result(&mut c, vec![enc_open(6)]).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("all 2 pipeline slots"), "{e}");
        // Silent sessions end after the idle timeout with DEADLINE_EXCEEDED...
        for (_tx, mut resp) in held {
            let r = resp.next().await.expect("a status, not a silent end");
            assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
        }
        // ...and their slots come back: a full round trip works, and sounds like the input.
        let t0 = Instant::now();
        let stoi = loop {
            // The slots are freed as the sessions' last outputs drain; wait for that.
            let probe = first_result(&mut c, vec![enc_open(6), pcm(speech_frames(1)[0].clone())]);
            match probe.await {
                Ok(_) => break round_trip_stoi(&mut c, None, 6).await,
                Err(e)
                    if e.code() == Code::ResourceExhausted
                        && t0.elapsed() < Duration::from_secs(10) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("slots not freed: {e}"),
            }
        };
        let card = card_stoi("aic", "L6");
        assert!(
            stoi > card - 0.05,
            "round trip STOI {stoi:.3}, card {card:.3}"
        );

        // Numbers out of range are refused, not taken as they wrap or bill.
        let e = first_result(&mut c, vec![open_with(6, u32::MAX, "aic")])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("reference_opus_kbps"), "{e}");
        let dec_open = |kbps: u32| DecodeRequest {
            msg: Some(decode_request::Msg::Open(DecodeOpen {
                codec: "aic".into(),
                sample_rate: 16_000,
                output: pb::DecodeOutput::Opus as i32,
                opus_bitrate_kbps: kbps,
                ..Default::default()
            })),
        };
        let e = c
            .decode_stream(tokio_stream::iter(vec![dec_open(4_294_974)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains("opus_bitrate_kbps"), "{e}");
        // A 1 MB string comes back as a bounded excerpt.
        let huge = "x".repeat(1 << 20);
        let e = first_result(&mut c, vec![open_with(6, 0, &huge)])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 200, "{} bytes", e.message().len());
        let e = c
            .hints(pb::HintsRequest {
                bandwidth_kbps: 64.0,
                loss: 0.0,
                rtt_ms: f64::INFINITY,
                jitter_ms: f64::NAN,
                mode: 0,
                model_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");

        // Oversized messages: RESOURCE_EXHAUSTED, first or mid-stream (never a silent OK).
        let big = vec![0u8; 9 << 20];
        let e = first_result(&mut c, vec![pcm(big.clone())])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        let mut reqs = vec![enc_open(6)];
        reqs.extend(speech_frames(3).into_iter().map(pcm));
        reqs.push(pcm(big));
        reqs.extend(speech_frames(3).into_iter().map(pcm));
        let mut resp = c
            .encode_stream(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let mut ok = 0;
        let end = loop {
            match resp.next().await {
                Some(Ok(_)) => ok += 1,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        let end = end.expect("the stream must end with a status, not OK");
        assert_eq!(end.code(), Code::ResourceExhausted, "{end}");
        assert!(ok <= 3, "{ok} frames answered");

        // Opus in: a packet longer than any Opus packet is refused; an empty one is a loss.
        let opus = |b: Vec<u8>| EncodeRequest {
            msg: Some(encode_request::Msg::Opus(b)),
        };
        let e = first_result(&mut c, vec![enc_open(6), opus(vec![0xfc; 64 << 10])])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        let got = first_result(&mut c, vec![enc_open(6), opus(Vec::new())])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_reflection_versions_are_served() {
    let srv = Server::start(&["--auth", "off", "--workers", "1"]);
    srv.within(60, "reflection", async {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let ch = Channel::from_shared(srv.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let r = resp.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(l)) = r.message_response else {
            panic!("{r:?}");
        };
        let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"aic.v1.CodecService"), "{names:?}");
        assert!(names.contains(&"aic.v1.ControlService"), "{names:?}");
    })
    .await;
}

fn admin<T>(token: &str, msg: T) -> Request<T> {
    with_key(Some(token), msg)
}

async fn new_key(
    ctl: &mut ControlServiceClient<Channel>,
    token: &str,
    tenant: &str,
    max_streams: u32,
) -> String {
    let t = ctl
        .create_tenant(admin(
            token,
            pb::CreateTenantRequest {
                name: tenant.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    ctl.create_key(admin(
        token,
        pb::CreateKeyRequest {
            tenant_id: t.tenant_id,
            name: format!("{tenant}-key"),
            policy: Some(pb::Policy {
                aic_enabled: true,
                allowed_modes: vec![],
                max_level: 0,
                max_streams,
            }),
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_the_slots_and_bad_admin_input_is_refused() {
    // 4 slots, half for one tenant at most; 3 failed authentications per minute per address.
    let srv = Server::start(&[
        "--max-streams",
        "4",
        "--workers",
        "1",
        "--auth-failures-per-minute",
        "3",
    ]);
    let token = std::fs::read_to_string(srv.dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    srv.within(180, "tenants_share_the_slots", async {
        let ch = Channel::from_shared(srv.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut ctl = ControlServiceClient::new(ch.clone());
        let mut c = CodecServiceClient::new(ch.clone());
        // max_streams 0: no per-key limit; the tenant share still holds.
        let greedy = new_key(&mut ctl, &token, "greedy", 0).await;
        let other = new_key(&mut ctl, &token, "other", 0).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel(4);
            tx.send(enc_open(6)).await.unwrap();
            let resp = c
                .encode_stream(with_key(Some(&greedy), ReceiverStream::new(rx)))
                .await
                .unwrap()
                .into_inner();
            held.push((tx, resp));
        }
        let e = c
            .encode_stream(with_key(
                Some(&greedy),
                tokio_stream::iter(vec![enc_open(6)]),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("share"), "{e}");
        // Another tenant still gets a slot, and its round trip sounds right.
        let stoi = round_trip_stoi(&mut c, Some(&other), 6).await;
        let card = card_stoi("aic", "L6");
        assert!(stoi > card - 0.05, "STOI {stoi:.3}, card {card:.3}");
        drop(held);

        // Policy numbers and names are checked.
        let keys = ctl
            .list_keys(admin(&token, pb::ListKeysRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .keys;
        let e = ctl
            .set_policy(admin(
                &token,
                pb::SetPolicyRequest {
                    key_id: keys[0].key_id.clone(),
                    policy: Some(pb::Policy {
                        aic_enabled: true,
                        allowed_modes: vec![],
                        max_level: 99,
                        max_streams: 1,
                    }),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        let e = ctl
            .create_tenant(admin(
                &token,
                pb::CreateTenantRequest {
                    name: "evil\nt_0000 forged row".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");

        // Failed authentications: 3 per minute from this address, then refused outright
        // (even a good key, until the minute is over), and logged once.
        let bad = "aick_0123456789abcdef_".to_owned() + &"0".repeat(64);
        for _ in 0..3 {
            let e = c
                .list_models(with_key(Some(&bad), pb::ListModelsRequest {}))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{e}");
        }
        let e = c
            .list_models(with_key(Some(&other), pb::ListModelsRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("failed authentications"), "{e}");
    })
    .await;
    assert!(srv.wait_log("authentication failed", 3, 5), "{}", srv.log());
    assert!(
        srv.wait_log("too many failed authentications", 1, 5),
        "{}",
        srv.log()
    );
    assert!(
        srv.wait_log("share of the pipeline slots", 1, 5),
        "{}",
        srv.log()
    );
    // Logged once per window, not once per refused attempt. A barrier instead of a wait: the
    // server logs "shutting down" on SIGTERM after every line of the refusals above.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status();
    assert!(srv.wait_log("shutting down", 1, 10), "{}", srv.log());
    let log = srv.log();
    assert_eq!(
        log.matches("too many failed authentications").count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_open_sessions_at_the_end_of_the_grace_period() {
    let mut srv = Server::start(&[
        "--auth",
        "off",
        "--workers",
        "1",
        "--shutdown-grace-secs",
        "1",
    ]);
    let url = srv.url();
    let pid = srv.child.id();
    let (tx, rx) = mpsc::channel(4);
    let status = tokio::time::timeout(Duration::from_secs(60), async move {
        let mut c = CodecServiceClient::connect(url).await.unwrap();
        tx.send(enc_open(6)).await.unwrap();
        let mut resp = c
            .encode_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // A client that keeps sending in real time for far longer than the grace period.
        let frames = speech_frames(100);
        let sender = tokio::spawn(async move {
            for f in frames.iter().cycle().take(1500) {
                if tx.send(pcm(f.clone())).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // Ten frames in, the server is told to stop.
        for _ in 0..10 {
            resp.next().await.unwrap().unwrap();
        }
        let t0 = Instant::now();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let end = loop {
            match resp.next().await {
                Some(Ok(_)) => {}
                other => break other,
            }
        };
        sender.abort();
        (end, t0.elapsed())
    })
    .await
    .unwrap_or_else(|_| panic!("session not cut; log:\n{}", srv.log()));
    let (end, after) = status;
    // Cut at ~1 s (grace) with UNAVAILABLE, or the connection went with the server.
    if let Some(Err(e)) = &end {
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{e}"
        );
    }
    assert!(
        after < Duration::from_secs(4),
        "session ran {after:?} past SIGTERM"
    );
    let exit = srv.wait_exit(6);
    assert!(
        exit.is_some(),
        "server still running 6 s after the cut; log:\n{}",
        srv.log()
    );
    assert!(srv.wait_log("grace period over", 1, 5), "{}", srv.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let k = KeyPair::generate().unwrap();
        let c = CertificateParams::new(names)
            .unwrap()
            .signed_by(&k, &issuer)
            .unwrap();
        (c.pem(), k.serialize_pem())
    };
    let (srv_cert, srv_key) = leaf(vec!["localhost".into()]);
    let (cli_cert, cli_key) = leaf(vec!["client".into()]);
    let w = |n: &str, t: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, t).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (sc, sk, ca) = (
        w("server.pem", &srv_cert),
        w("server.key", &srv_key),
        w("ca.pem", &ca_cert.pem()),
    );
    let ca_pem = ca_cert.pem();
    let tls = |id: Option<(&str, &str)>| {
        let mut t = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
            .domain_name("localhost");
        if let Some((c, k)) = id {
            t = t.identity(tonic::transport::Identity::from_pem(c, k));
        }
        t
    };

    // TLS: a client that trusts the CA is served; a plaintext client is not.
    let srv = Server::start(&[
        "--auth",
        "off",
        "--workers",
        "1",
        "--tls-cert",
        &sc,
        "--tls-key",
        &sk,
    ]);
    assert!(srv.log().contains("TLS"), "{}", srv.log()); // the first line, read at start
    let https = format!("https://{}", srv.addr);
    srv.within(60, "tls", async {
        let ch = Channel::from_shared(https.clone())
            .unwrap()
            .tls_config(tls(None))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = CodecServiceClient::new(ch);
        let m = c
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!m.models.is_empty());
        let plain = match Channel::from_shared(srv.url()).unwrap().connect().await {
            Ok(ch) => CodecServiceClient::new(ch)
                .list_models(pb::ListModelsRequest {})
                .await
                .is_ok(),
            Err(_) => false,
        };
        assert!(!plain, "plaintext must not be served on a TLS port");
    })
    .await;
    drop(srv);

    // Mutual TLS: without a client certificate the handshake fails; with one it works.
    let srv = Server::start(&[
        "--auth",
        "off",
        "--workers",
        "1",
        "--tls-cert",
        &sc,
        "--tls-key",
        &sk,
        "--tls-client-ca",
        &ca,
    ]);
    let https = format!("https://{}", srv.addr);
    srv.within(60, "mtls", async {
        let anon = match Channel::from_shared(https.clone())
            .unwrap()
            .tls_config(tls(None))
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => CodecServiceClient::new(ch)
                .list_models(pb::ListModelsRequest {})
                .await
                .is_ok(),
            Err(_) => false,
        };
        assert!(!anon, "a client without a certificate must be refused");
        let ch = Channel::from_shared(https.clone())
            .unwrap()
            .tls_config(tls(Some((&cli_cert, &cli_key))))
            .unwrap()
            .connect()
            .await
            .unwrap();
        CodecServiceClient::new(ch)
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap();
    })
    .await;
}

#[test]
fn plaintext_off_loopback_needs_insecure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["serve", "--listen", "0.0.0.0:0", "--print-config"])
        .env("AIC_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("clear text"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aic"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--print-config",
        ])
        .env("AIC_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_session_gives_clients_an_error_fast_and_the_store_reopens() {
    let data = tempfile::tempdir().unwrap();
    let mut srv = Server::start_at(data.path(), &["--auth", "off", "--workers", "1"]);
    let url = srv.url();
    let (tx, rx) = mpsc::channel(4);
    let mut c = CodecServiceClient::connect(url).await.unwrap();
    tx.send(enc_open(6)).await.unwrap();
    let mut resp = c
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for f in speech_frames(5) {
        tx.send(pcm(f)).await.unwrap();
        resp.next().await.unwrap().unwrap();
    }
    srv.child.kill().unwrap(); // SIGKILL
    let t0 = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), resp.next())
        .await
        .expect("the client must learn within seconds that the server is gone");
    let took = t0.elapsed();
    let end_code = match &end {
        Some(Err(e)) => format!("{:?} {}", e.code(), e.message()),
        _ => String::new(),
    };
    match end {
        Some(Err(e)) => assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            ),
            "{e}"
        ),
        other => panic!("expected an error status, got {other:?}"),
    }
    eprintln!("client saw the kill after {took:?}: {end_code}");
    assert!(
        took < Duration::from_secs(2),
        "client saw the death after {took:?}"
    );
    // The same data dir serves again (the SQLite store survived the kill).
    let _ = srv.child.wait();
    let srv2 = Server::start_at(data.path(), &["--auth", "off", "--workers", "1"]);
    srv2.within(30, "restart after kill -9", async {
        let mut c = CodecServiceClient::connect(srv2.url()).await.unwrap();
        c.list_models(pb::ListModelsRequest {}).await.unwrap();
    })
    .await;
    drop(srv);
}

/// An `EncodeRequest` look-alike that can also carry field 2 (`pcm_s16le`, bytes on the wire)
/// as a varint: a message the server cannot decode.
#[derive(Clone, PartialEq, prost::Message)]
struct Loose {
    #[prost(message, optional, tag = "1")]
    open: Option<EncodeOpen>,
    #[prost(uint64, optional, tag = "2")]
    bad: Option<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_mid_stream_ends_it_with_invalid_argument() {
    let srv = Server::start(&["--auth", "off", "--workers", "1"]);
    srv.within(60, "undecodable mid-stream", async {
        let ch = Channel::from_shared(srv.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut g = tonic::client::Grpc::new(ch);
        g.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<Loose, pb::EncodeResponse>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/aic.v1.CodecService/EncodeStream",
        );
        let EncodeRequest {
            msg: Some(encode_request::Msg::Open(open)),
        } = enc_open(6)
        else {
            unreachable!()
        };
        let msgs = vec![
            Loose {
                open: Some(open),
                bad: None,
            },
            Loose {
                open: None,
                bad: Some(5),
            },
        ];
        let mut resp = g
            .streaming(Request::new(tokio_stream::iter(msgs)), path, codec)
            .await
            .unwrap()
            .into_inner();
        let end = loop {
            match resp.next().await {
                Some(Ok(_)) => {}
                other => break other,
            }
        };
        match end {
            Some(Err(e)) => assert_eq!(e.code(), Code::InvalidArgument, "{e}"),
            other => panic!("the stream must end with a status, got {other:?}"),
        }
    })
    .await;
}
