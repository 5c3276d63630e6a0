//! EgressService end to end (issue #13): the real `aic serve` with API keys on, a live
//! EncodeStream session recorded to Ogg, `.aic` and HLS by StartEgress, followed by
//! WatchEgress and `aic egress list`, metered as egress seconds to the key; and the checks
//! that keep clients inside their tenant's directory and off the network.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aic_proto::v1 as pb;
use aic_proto::v1::codec_service_client::CodecServiceClient;
use aic_proto::v1::control_service_client::ControlServiceClient;
use aic_proto::v1::egress_service_client::EgressServiceClient;
use aic_proto::v1::{EncodeOpen, EncodeRequest, encode_request};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn bearer<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn admin<T>(token: &str, msg: T) -> Request<T> {
    let mut r = bearer(token, msg);
    r.metadata_mut()
        .insert("x-aic-actor", "e2e".parse().unwrap());
    r
}

fn speech() -> Vec<Vec<u8>> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../datasets/fixtures/speech/en_f_confbridge.wav");
    let mut r = hound::WavReader::open(p).unwrap();
    let x: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    x.chunks_exact(320)
        .map(|f| f.iter().flat_map(|s| s.to_le_bytes()).collect())
        .collect()
}

fn open(key: &str) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::Open(EncodeOpen {
            codec: "aic".into(),
            level: 6,
            sample_rate: 16_000,
            latency_budget_ms: 0,
            reference_opus_kbps: 0,
            model_id: String::new(),
            egress_key: key.into(),
        })),
    }
}

fn pcm(b: Vec<u8>) -> EncodeRequest {
    EncodeRequest {
        msg: Some(encode_request::Msg::PcmS16le(b)),
    }
}

fn out(location: &str) -> pb::EgressOutput {
    pb::EgressOutput {
        location: location.into(),
        ..Default::default()
    }
}

async fn tenant_and_key(
    ctl: &mut ControlServiceClient<Channel>,
    token: &str,
    name: &str,
) -> (String, String, String) {
    let t = ctl
        .create_tenant(admin(token, pb::CreateTenantRequest { name: name.into() }))
        .await
        .unwrap()
        .into_inner();
    let k = ctl
        .create_key(admin(
            token,
            pb::CreateKeyRequest {
                tenant_id: t.tenant_id.clone(),
                name: "rec".into(),
                policy: Some(pb::Policy {
                    aic_enabled: true,
                    allowed_modes: vec![],
                    max_level: 12,
                    max_streams: 4,
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (t.tenant_id, k.key.unwrap().key_id, k.secret)
}

fn ffdecode_s(p: &Path) -> f64 {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(p)
        .args(["-f", "s16le", "-ac", "1", "-ar", "16000", "-"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout.len() as f64 / 2.0 / 16_000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_recorded_watched_listed_and_metered() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = support::Server::start_at(
        &data,
        &[
            "--max-streams",
            "8",
            "--workers",
            "1",
            "--meter-flush-secs",
            "1",
        ],
    );
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let ch = s.channel().await;
    let mut ctl = ControlServiceClient::new(ch.clone());
    let (tenant, key_id, key) = tenant_and_key(&mut ctl, &token, "rec-co").await;
    let mut codec = CodecServiceClient::new(ch.clone());
    let mut eg = EgressServiceClient::new(ch.clone());

    // A live session named "call-1", fed at twice real time.
    let frames = speech();
    let (tx, rx) = mpsc::channel(4);
    tx.send(open("call-1")).await.unwrap();
    let mut resp = codec
        .encode_stream(bearer(&key, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(r) = resp.next().await {
            r.unwrap();
            n += 1;
        }
        n
    });
    for f in frames[..20].iter() {
        tx.send(pcm(f.clone())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = s
        .within(
            20,
            "StartEgress",
            eg.start_egress(bearer(
                &key,
                pb::StartEgressRequest {
                    stream: "call-1".into(),
                    outputs: vec![out("call.ogg"), out("call.aic"), out("call/")],
                    ..Default::default()
                },
            )),
        )
        .await
        .unwrap()
        .into_inner();
    eprintln!("started: {started:?}");
    assert_eq!(started.outputs.len(), 3);
    assert_eq!(started.outputs[0].location, "call.ogg");
    let mut watch = eg
        .watch_egress(bearer(
            &key,
            pb::WatchEgressRequest {
                egress_id: started.egress_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(i) = watch.next().await {
            seen.push(i.unwrap());
        }
        seen
    });
    for f in frames[20..].iter() {
        tx.send(pcm(f.clone())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `aic egress list` sees it while the session runs.
    let list = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["egress", "list", "--server", &s.url(), "--api-key", &key])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        listed.contains(&started.egress_id) && listed.contains("call.ogg"),
        "{listed}"
    );
    // The session ends: its egress is stopped and its files finished.
    drop(tx);
    assert_eq!(reader.await.unwrap(), frames.len());
    let seen = s.within(20, "WatchEgress to end", watcher).await.unwrap();
    let last = seen.last().unwrap();
    eprintln!("watch: {} updates, last {last:?}", seen.len());
    assert_eq!(last.state, "stopped", "{last:?}");
    assert!(seen.iter().any(|i| i.state == "recording"), "{seen:?}");
    let recorded = frames.len() as u64 - 20;
    let tdir = data.join("egress").join(&tenant);
    for o in &last.outputs {
        assert_eq!(o.state, "stopped", "{o:?}");
        // Frames sent after the start (a few more may have been in the pipeline before it).
        assert!(
            o.media_ms >= recorded * 20 - 100 && o.media_ms <= (recorded + 5) * 20,
            "{o:?}"
        );
    }
    let ogg = &last.outputs[0];
    let got = ffdecode_s(&tdir.join("call.ogg"));
    assert!(
        (got * 1000.0 - ogg.media_ms as f64).abs() <= 20.0,
        "ogg {got} s vs {} ms",
        ogg.media_ms
    );
    let wav = dir.path().join("aic.wav");
    let st = Command::new(env!("CARGO_BIN_EXE_aic"))
        .arg("decode")
        .arg(tdir.join("call.aic"))
        .arg("-o")
        .arg(&wav)
        .status()
        .unwrap();
    assert!(st.success());
    let n = hound::WavReader::open(&wav).unwrap().len() as f64 / 16_000.0;
    assert!(
        (n * 1000.0 - last.outputs[1].media_ms as f64).abs() <= 40.0,
        "aic {n} s"
    );
    let playlist = std::fs::read_to_string(tdir.join("call").join("index.m3u8")).unwrap();
    assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");

    // Metered: egress seconds for the key (one per recorded PCM frame), after a flush.
    let want = ogg.media_ms as f64 / 1000.0;
    let mut egress_s = 0.0;
    for _ in 0..50 {
        let u = ctl
            .get_usage(admin(
                &token,
                pb::GetUsageRequest {
                    key_id: key_id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .totals;
        egress_s = u.first().map(|u| u.media_seconds_egress).unwrap_or(0.0);
        if (egress_s - want).abs() < 0.021 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        (egress_s - want).abs() < 0.021,
        "metered {egress_s} s, recorded {want} s"
    );

    // The archive just recorded, rendered by the server through its pipeline to WebM, with
    // the CLI following it to the end.
    let o = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args([
            "egress",
            "start",
            "--archive",
            "call.aic",
            "again.webm",
            "--watch",
        ])
        .args(["--server", &s.url(), "--api-key", &key])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("archive:call.aic") && text.contains("stopped"),
        "{text}"
    );
    let again = ffdecode_s(&tdir.join("again.webm"));
    let aic_ms = last.outputs[1].media_ms as f64;
    assert!(
        (again * 1000.0 - aic_ms).abs() <= 20.0,
        "again.webm {again} s for {aic_ms} ms"
    );
    // Outside the tenant's directory, or not an archive: refused.
    for bad in ["../call.aic", "call.ogg", "none.aic"] {
        let e = eg
            .start_egress(bearer(
                &key,
                pb::StartEgressRequest {
                    archive: bad.into(),
                    outputs: vec![out("x.ogg")],
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::InvalidArgument | Code::NotFound),
            "{bad}: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_requests_stay_in_their_tenant_and_off_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = support::Server::start_at(&data, &["--max-streams", "8", "--workers", "1"]);
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let ch = s.channel().await;
    let mut ctl = ControlServiceClient::new(ch.clone());
    let (_, _, key) = tenant_and_key(&mut ctl, &token, "a").await;
    let (_, _, other) = tenant_and_key(&mut ctl, &token, "b").await;
    let mut codec = CodecServiceClient::new(ch.clone());
    let mut eg = EgressServiceClient::new(ch.clone());

    let (tx, rx) = mpsc::channel(4);
    tx.send(open("room-7")).await.unwrap();
    let _resp = codec
        .encode_stream(bearer(&key, ReceiverStream::new(rx)))
        .await
        .unwrap();
    // The same key again, while the first lives: refused.
    let (tx2, rx2) = mpsc::channel(4);
    tx2.send(open("room-7")).await.unwrap();
    let e = codec
        .encode_stream(bearer(&key, ReceiverStream::new(rx2)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let (tx3, rx3) = mpsc::channel(4);
    tx3.send(open("bad key!")).await.unwrap();
    let e = codec
        .encode_stream(bearer(&key, ReceiverStream::new(rx3)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let start = |stream: &str, outs: Vec<pb::EgressOutput>| pb::StartEgressRequest {
        stream: stream.into(),
        outputs: outs,
        ..Default::default()
    };
    for (k, req, code) in [
        (&key, start("nope", vec![out("a.ogg")]), Code::NotFound),
        // Another tenant cannot record this tenant's session.
        (&other, start("room-7", vec![out("a.ogg")]), Code::NotFound),
        (
            &key,
            start("room-7", vec![out("../a.ogg")]),
            Code::InvalidArgument,
        ),
        (
            &key,
            start("room-7", vec![out("/tmp/a.ogg")]),
            Code::InvalidArgument,
        ),
        (
            &key,
            start("room-7", vec![out(".hidden.ogg")]),
            Code::InvalidArgument,
        ),
        (
            &key,
            start("room-7", vec![out("a.flac")]),
            Code::InvalidArgument,
        ),
        (
            &key,
            start("room-7", vec![out("rtmp://127.0.0.1:1/app/k")]),
            Code::PermissionDenied,
        ),
        (&key, start("room-7", vec![]), Code::InvalidArgument),
        (
            &key,
            start(
                "room-7",
                (0..9).map(|i| out(&format!("x{i}.ogg"))).collect(),
            ),
            Code::InvalidArgument,
        ),
    ] {
        let e = eg.start_egress(bearer(k, req)).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    let e = eg
        .start_egress(start("room-7", vec![out("a.ogg")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A real one, then the other tenant can neither see nor stop it.
    let a = eg
        .start_egress(bearer(&key, start("room-7", vec![out("a.ogg")])))
        .await
        .unwrap()
        .into_inner();
    let b = eg
        .start_egress(bearer(&key, start("room-7", vec![out("a.ogg")])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.outputs[0].location, "a-2.ogg", "never overwrite: {b:?}");
    let theirs = eg
        .list_egress(bearer(&other, pb::ListEgressRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.egresses.is_empty());
    let e = eg
        .stop_egress(bearer(
            &other,
            pb::StopEgressRequest {
                egress_id: a.egress_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let stopped = eg
        .stop_egress(bearer(
            &key,
            pb::StopEgressRequest {
                egress_id: a.egress_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.state, "stopped", "{stopped:?}");

    // SIGTERM with `b` still recording: the server finishes its file before it exits.
    for f in speech().into_iter().take(50) {
        tx.send(pcm(f)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut s = s;
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    let st = s.wait_exit(30).expect("aic serve exits after SIGTERM");
    assert!(st.success(), "{st}");
    let tenant_dir = std::fs::read_dir(data.join("egress"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let got = ffdecode_s(&tenant_dir.join("a-2.ogg"));
    assert!(
        (got - 1.0).abs() <= 0.02,
        "a-2.ogg: {got} s of the 1 s sent"
    );
    drop(tx);
}
