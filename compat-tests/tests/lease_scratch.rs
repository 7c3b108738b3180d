use std::time::{Duration, Instant};
use compat_tests::lease::*;
use compat_tests::Server;

#[tokio::test]
async fn scratch() {
    let mut server = Server::start_default().await;
    let mut client = server.client().await;
    let t0 = Instant::now();
    let lease = grant(&mut client, 20).await;
    let mut last = 0;
    loop {
        let ttl = time_to_live(&mut client, lease, false).await.ttl;
        if ttl != last { eprintln!("{:?} ttl {ttl}", t0.elapsed()); last = ttl; }
        if ttl <= 9 { break; }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client.lease_keep_alive(lease).await;
    eprintln!("{:?} keep_alive -> {:?}", t0.elapsed(), r.as_ref().map(|_| ()));
    let (mut keeper, mut answers) = match r { Ok(x) => x, Err(_) => client.lease_keep_alive(lease).await.expect("second try") };
    keeper.keep_alive().await.unwrap();
    let a = answers.message().await;
    eprintln!("{:?} second -> {:?}", t0.elapsed(), a.map(|m| m.map(|m| m.ttl())));
    eprintln!("{:?} ttl now {:?}", t0.elapsed(), time_to_live(&mut client, lease, false).await);
    eprintln!("LOG1:\n{}", server.log_tail());
    server.restart().await;
    let mut client = server.client().await;
    eprintln!("{:?} after restart {:?}", t0.elapsed(), time_to_live(&mut client, lease, false).await);
    eprintln!("{}", server.log_tail());
}
