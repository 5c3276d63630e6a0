//! End to end for the control plane: the real `aic serve` on loopback with API keys on, driven
//! by the generated tonic clients — admin API, keys, policies, limits, metering, audit, graceful
//! shutdown (SIGTERM) with usage surviving a restart, and config precedence.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aic_proto::v1 as pb;
use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::control_service_client::ControlServiceClient;
use aic_proto::v1::{EncodeOpen, EncodeRequest, encode_request, encode_response};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

mod support;

/// `aic serve` with keys on, on a data dir the test keeps (restarts see the same store),
/// through the shared test support.
struct Server;

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> support::Server {
        let mut args = vec![
            "--max-streams",
            "8",
            "--workers",
            "1",
            "--key-cache-ttl-secs",
            "1",
        ];
        args.extend_from_slice(extra);
        support::Server::start_at(data_dir, &args)
    }
}

fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned()
}

fn with_auth<T>(msg: T, header: &str, value: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        tonic::metadata::AsciiMetadataKey::from_bytes(header.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    r
}

fn admin<T>(token: &str, msg: T) -> Request<T> {
    let mut r = with_auth(msg, "authorization", &format!("Bearer {token}"));
    r.metadata_mut()
        .insert("x-aic-actor", "e2e".parse().unwrap());
    r
}

fn bearer<T>(key: &str, msg: T) -> Request<T> {
    with_auth(msg, "authorization", &format!("Bearer {key}"))
}

fn speech_s16le(frames: usize) -> Vec<Vec<u8>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech/en_f_confbridge.wav");
    let mut r = hound::WavReader::open(p).unwrap();
    let x: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    (0..frames)
        .map(|f| {
            x[f * 320..(f + 1) * 320]
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect()
        })
        .collect()
}

fn enc_open(level: u32) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: "aic".into(),
            level,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps: 24,
            model_id: String::new(),
            egress_key: String::new(),
        })),
    }
}

fn pcm(b: Vec<u8>) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::PcmS16le(b)),
    }
}

/// One complete encode session with `key`; the frames in order, or the status that ended it.
async fn encode_session(
    c: &mut CodecServiceClient<Channel>,
    key: &str,
    level: u32,
    frames: usize,
) -> Result<Vec<encode_response::Frame>, tonic::Status> {
    let mut reqs = vec![enc_open(level)];
    reqs.extend(speech_s16le(frames).into_iter().map(pcm));
    let mut out: Vec<_> = c
        .encode_stream(bearer(key, tokio_stream::iter(reqs)))
        .await?
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await?;
    out.sort_by_key(|r| r.seq);
    assert_eq!(out.len(), frames);
    Ok(out.into_iter().map(|r| r.frame.unwrap()).collect())
}

fn policy(aic: bool, modes: &[&str], max_level: u32, max_streams: u32) -> pb::Policy {
    pb::Policy {
        aic_enabled: aic,
        allowed_modes: modes.iter().map(|s| s.to_string()).collect(),
        max_level,
        max_streams,
    }
}

async fn new_key(
    ctl: &mut ControlServiceClient<Channel>,
    token: &str,
    tenant: &str,
    name: &str,
    p: pb::Policy,
) -> (String, String) {
    let r = ctl
        .create_key(admin(
            token,
            pb::CreateKeyRequest {
                tenant_id: tenant.into(),
                name: name.into(),
                policy: Some(p),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (r.key.unwrap().key_id, r.secret)
}

async fn usage_of(
    ctl: &mut ControlServiceClient<Channel>,
    token: &str,
    key_id: &str,
) -> Option<pb::Usage> {
    ctl.get_usage(admin(
        token,
        pb::GetUsageRequest {
            key_id: key_id.into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .totals
    .into_iter()
    .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_policies_limits_metering_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--meter-flush-secs", "1"]);
    let token = admin_token(&data);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let m = std::fs::metadata(data.join("admin.token")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }
    let ch = s.channel().await;
    let mut ctl = ControlServiceClient::new(ch.clone());
    let mut c = CodecServiceClient::new(ch.clone());

    // The admin API needs the admin token.
    let e = ctl
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = ctl
        .list_tenants(admin(
            &format!("aica_{}", "0".repeat(64)),
            pb::ListTenantsRequest {},
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let tenant = ctl
        .create_tenant(admin(
            &token,
            pb::CreateTenantRequest {
                name: "acme".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let e = ctl
        .create_tenant(admin(
            &token,
            pb::CreateTenantRequest {
                name: "acme".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let t = &tenant.tenant_id;
    let (a_id, a) = new_key(&mut ctl, &token, t, "full", policy(true, &[], 0, 2)).await;
    let (_b_id, b) = new_key(&mut ctl, &token, t, "aic-off", policy(false, &[], 0, 2)).await;
    let (c_id, ck) = new_key(
        &mut ctl,
        &token,
        t,
        "capped",
        policy(true, &["conservative"], 2, 2),
    )
    .await;

    // Auth failures: none, garbage, well-formed but unknown, wrong secret.
    let e = c.list_models(pb::ListModelsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("API key"), "{e}");
    for bad in [
        "garbage".to_owned(),
        format!("aick_{}_{}", "0".repeat(16), "1".repeat(64)),
        format!(
            "{}{}",
            &a[..a.len() - 1],
            if a.ends_with('0') { '1' } else { '0' }
        ),
    ] {
        let e = c
            .list_models(bearer(&bad, pb::ListModelsRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad}");
        let e = encode_session(&mut c, &bad, 2, 3).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad}");
    }
    // Both header forms work.
    c.list_models(with_auth(pb::ListModelsRequest {}, "x-api-key", &a))
        .await
        .unwrap();

    // A full encode → decode session with key A.
    let frames = encode_session(&mut c, &a, 4, 50).await.unwrap();
    let aic: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|f| match f {
            encode_response::Frame::Aic(b) => Some(b.clone()),
            encode_response::Frame::OpusFallback(_) => None,
        })
        .collect();
    assert!(aic.len() >= 40, "{} of 50 through the model", aic.len());
    let mut reqs = vec![pb::DecodeRequest {
        msg: Some(pb::decode_request::Msg::Open(pb::DecodeOpen {
            codec: "aic".into(),
            sample_rate: 16_000,
            ..Default::default()
        })),
    }];
    reqs.extend(aic.iter().map(|b| pb::DecodeRequest {
        msg: Some(pb::decode_request::Msg::Aic(b.clone())),
    }));
    let dec: Vec<_> = c
        .decode_stream(bearer(&a, tokio_stream::iter(reqs)))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(dec.len(), aic.len());

    // AIC off for key B: PERMISSION_DENIED on AIC calls; listing still works.
    let e = encode_session(&mut c, &b, 2, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let hints = |mode: pb::HintMode| pb::HintsRequest {
        bandwidth_kbps: 64.0,
        loss: 0.0,
        rtt_ms: 40.0,
        jitter_ms: 5.0,
        mode: mode as i32,
        model_id: String::new(),
    };
    let e = c
        .hints(bearer(&b, hints(pb::HintMode::Adaptive)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    c.list_models(bearer(&b, pb::ListModelsRequest {}))
        .await
        .unwrap();

    // Key C: level and mode limits.
    let e = encode_session(&mut c, &ck, 4, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let capped = encode_session(&mut c, &ck, 0, 10).await.unwrap();
    for f in &capped {
        if let encode_response::Frame::Aic(bytes) = f {
            let h = aic_codec::bitstream::frame::FrameHeader::peek(bytes).unwrap();
            assert!(h.level <= 2, "level 0 = the key's cap, got {}", h.level);
        }
    }
    let e = c
        .hints(bearer(&ck, hints(pb::HintMode::Aggressive)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let h = c
        .hints(bearer(&ck, hints(pb::HintMode::Conservative)))
        .await
        .unwrap()
        .into_inner();
    assert!(h.level <= 2, "{h:?}");

    // Key A may hold 2 sessions: a third is RESOURCE_EXHAUSTED; the others keep working.
    let speech = speech_s16le(20);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mpsc::channel(32);
        tx.send(enc_open(2)).await.unwrap();
        let resp = c
            .encode_stream(bearer(&a, ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        held.push((tx, resp));
    }
    let e = encode_session(&mut c, &a, 2, 3).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // Another key is not affected by A's limit.
    assert_eq!(encode_session(&mut c, &ck, 2, 3).await.unwrap().len(), 3);
    // One held client vanishes mid-stream; the other finishes normally.
    let (vtx, mut vresp) = held.pop().unwrap();
    for f in &speech[..10] {
        vtx.send(pcm(f.clone())).await.unwrap();
    }
    // Vanish once the server has coded (and metered) those 10 frames.
    for _ in 0..10 {
        vresp.next().await.unwrap().unwrap();
    }
    drop(vresp);
    drop(vtx);
    let (tx, mut resp) = held.pop().unwrap();
    for f in &speech {
        tx.send(pcm(f.clone())).await.unwrap();
    }
    drop(tx);
    let mut n = 0;
    while let Some(r) = resp.next().await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 20);
    // Both slots are free again (as soon as the sessions' last outputs are through).
    let t0 = Instant::now();
    loop {
        match encode_session(&mut c, &a, 2, 5).await {
            Ok(f) => break assert_eq!(f.len(), 5),
            Err(e)
                if e.code() == Code::ResourceExhausted
                    && t0.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!(
                "slots not freed within 10 s: {e}; log:\n{}",
                s.log.lock().unwrap()
            ),
        }
    }

    // Oversized message: refused, and the server goes on serving.
    let huge = vec![0u8; 9 << 20];
    let r = c
        .encode(bearer(
            &a,
            pb::EncodeClipRequest {
                open: match enc_open(2).msg {
                    Some(encode_request::Msg::Open(o)) => Some(o),
                    _ => None,
                },
                pcm_s16le: huge,
            },
        ))
        .await;
    assert!(r.is_err(), "a 9 MiB message is over the 8 MiB limit");
    // A message that is not a valid protobuf for the method: INVALID_ARGUMENT-class error.
    let garbage = garbage_unary(ch.clone(), &a).await;
    assert!(
        matches!(garbage, Code::Internal | Code::InvalidArgument),
        "{garbage:?}"
    );
    assert_eq!(encode_session(&mut c, &a, 2, 3).await.unwrap().len(), 3);

    // Metering: flushed within the flush interval. Key A carried six sessions: five encode
    // (50, 10 then vanished, 20, 5 and 3 frames) and one decode; a session is counted when it
    // has ended (its last output is through), so wait for all six.
    let t0 = Instant::now();
    let u = loop {
        if let Some(u) = usage_of(&mut ctl, &token, &a_id).await
            && u.sessions >= 6
        {
            break u;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "usage never flushed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(u.sessions, 6, "{u:?}");
    assert!(
        (u.media_seconds_decoded - aic.len() as f64 * 0.02).abs() < 1e-9,
        "{u:?}"
    );
    assert!(u.bytes_in >= 50 * 640, "{u:?}");
    assert!(u.bytes_saved > 0 && u.bytes_out > 0, "{u:?}");
    // The vanished client's frames that were processed are metered too (≥ 1.0 s from the
    // full session + 0.4 s from the one that finished).
    assert!(u.media_seconds_encoded >= 1.55, "{u:?}");
    let cu = usage_of(&mut ctl, &token, &c_id).await.unwrap();
    assert!((cu.media_seconds_encoded - 0.26).abs() < 1e-9, "{cu:?}");

    // Revocation applies within the key cache TTL (1 s here).
    ctl.revoke_key(admin(
        &token,
        pb::RevokeKeyRequest {
            key_id: a_id.clone(),
        },
    ))
    .await
    .unwrap();
    let t0 = Instant::now();
    let e = loop {
        match encode_session(&mut c, &a, 2, 3).await {
            Err(e) if e.code() == Code::Unauthenticated => break e,
            _ if t0.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!(
                "revocation not applied within 5 s: {:?}",
                other.map(|f| f.len())
            ),
        }
    };
    assert!(e.message().contains("revoked"), "{e}");
    // The cache TTL is 1 s: the revocation applies within it (plus a call's time).
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );

    // Policy change: AIC on for key B.
    ctl.set_policy(admin(
        &token,
        pb::SetPolicyRequest {
            key_id: _b_id.clone(),
            policy: Some(policy(true, &[], 0, 1)),
        },
    ))
    .await
    .unwrap();
    let t0 = Instant::now();
    loop {
        match encode_session(&mut c, &b, 2, 3).await {
            Ok(f) => break assert_eq!(f.len(), 3),
            Err(e)
                if e.code() == Code::PermissionDenied && t0.elapsed() < Duration::from_secs(5) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("policy change not applied within 5 s: {e}"),
        }
    }

    // The audit log has every change: who, what, when, from where.
    let log = ctl
        .list_audit(admin(&token, pb::ListAuditRequest { limit: 100 }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "SetPolicy",
            "RevokeKey",
            "CreateKey",
            "CreateKey",
            "CreateKey",
            "CreateTenant"
        ]
    );
    for e in &log {
        assert!(e.who.starts_with("e2e (admin:"), "{e:?}");
        assert!(e.peer.starts_with("127.0.0.1:"), "{e:?}");
        assert!(e.at_unix_ms > 1_700_000_000_000);
    }
    assert!(
        log.iter().all(|e| !e.detail.contains("aick_")),
        "no secrets in the audit log"
    );
}

/// A message that is not what the method expects: field 1 of `EncodeClipRequest` is a message,
/// sent here as a varint, so the server cannot decode it.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(uint64, tag = "1")]
    open: u64,
}

async fn garbage_unary(ch: Channel, key: &str) -> Code {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Garbage, pb::EncodeClipResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/aic.v1.CodecService/Encode");
    match g.unary(bearer(key, Garbage { open: 7 }), path, codec).await {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_sigterm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    // A flush interval far longer than the test: only the shutdown flush can save the usage.
    let mut s = Server::start(&data, &["--meter-flush-secs", "3600"]);
    let token = admin_token(&data);
    let ch = s.channel().await;
    let mut ctl = ControlServiceClient::new(ch.clone());
    let mut c = CodecServiceClient::new(ch);
    let t = ctl
        .create_tenant(admin(&token, pb::CreateTenantRequest { name: "t".into() }))
        .await
        .unwrap()
        .into_inner();
    let (id, key) = new_key(&mut ctl, &token, &t.tenant_id, "k", policy(true, &[], 0, 4)).await;
    assert_eq!(encode_session(&mut c, &key, 3, 25).await.unwrap().len(), 25);

    // A session still open when SIGTERM arrives finishes its in-flight frames.
    let speech = speech_s16le(20);
    let (tx, rx) = mpsc::channel(32);
    tx.send(enc_open(3)).await.unwrap();
    let mut resp = c
        .encode_stream(bearer(&key, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    for f in &speech[..10] {
        tx.send(pcm(f.clone())).await.unwrap();
    }
    let mut got = 0;
    while got < 10 {
        resp.next().await.unwrap().unwrap();
        got += 1;
    }
    let pid = s.child.id();
    let killer = std::thread::spawn(move || {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    });
    assert!(killer.join().unwrap().success());
    // The rest is sent once the server is in its grace period.
    let t0 = std::time::Instant::now();
    while !s.log().contains("shutting down") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no shutdown after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in &speech[10..] {
        tx.send(pcm(f.clone())).await.unwrap();
    }
    drop(tx);
    while let Some(r) = resp.next().await {
        r.unwrap();
        got += 1;
    }
    assert_eq!(got, 20, "the open session finished after SIGTERM");
    let st = s.wait_exit(30).expect("no exit after SIGTERM");
    assert!(
        st.success(),
        "clean exit: {st:?}\n{}",
        s.log.lock().unwrap()
    );
    assert!(s.log.lock().unwrap().contains("usage flushed"));
    drop(s);

    let s = Server::start(&data, &["--meter-flush-secs", "3600"]);
    assert_eq!(admin_token(&data), token, "the admin token is kept");
    let mut ctl = ControlServiceClient::new(s.channel().await);
    let u = usage_of(&mut ctl, &token, &id)
        .await
        .expect("usage after restart");
    assert_eq!(u.sessions, 2, "{u:?}");
    assert!((u.media_seconds_encoded - 0.9).abs() < 1e-9, "{u:?}");
    assert_eq!(u.bytes_in, 45 * 640, "{u:?}");
    assert!(u.bytes_saved > 0);
}

#[test]
fn config_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("aic.toml");
    std::fs::write(
        &cfg,
        "max_streams = 3\nlog_format = \"json\"\nmeter_flush_secs = 30\n",
    )
    .unwrap();
    let print = |env: &[(&str, &str)], flags: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_aic"))
            .args(["serve", "--print-config", "--config"])
            .arg(&cfg)
            .args(flags)
            .env_remove("AIC_MAX_STREAMS")
            .env_remove("AIC_LOG_FORMAT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let file_only = print(&[], &[]);
    assert!(file_only.contains("max_streams = 3"), "{file_only}");
    assert!(file_only.contains("log_format = \"json\""));
    assert!(file_only.contains("meter_flush_secs = 30"));
    assert!(file_only.contains("auth = \"on\""), "auth is on by default");
    assert!(
        file_only.contains("listen = \"127.0.0.1:50051\""),
        "default"
    );
    let env = print(&[("AIC_MAX_STREAMS", "5")], &[]);
    assert!(env.contains("max_streams = 5"), "{env}");
    let flag = print(&[("AIC_MAX_STREAMS", "5")], &["--max-streams", "7"]);
    assert!(flag.contains("max_streams = 7"), "{flag}");
    // Keys off only on loopback; unknown config keys are errors, not silently ignored.
    let out = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args([
            "serve",
            "--print-config",
            "--auth",
            "off",
            "--listen",
            "0.0.0.0:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    std::fs::write(&cfg, "max_stream = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["serve", "--print-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
