//! Point reads against a real etcd.

use meshfilter_etcd::{Client, read_serializable};
use meshfilter_local_etcd::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_one_key_exactly() {
    let etcd = EtcdServer::start("read-serializable");
    let mut client = Client::connect([etcd.endpoint()], None).await.unwrap();
    client.put("p/a", "1", None).await.unwrap();
    client.put("p/ab", "2", None).await.unwrap();
    let entry = read_serializable(&client, "test", "p/a")
        .await
        .unwrap()
        .expect("present");
    assert_eq!((entry.key.as_str(), &entry.value[..]), ("p/a", &b"1"[..]));
    assert_eq!(
        read_serializable(&client, "test", "p/").await.unwrap(),
        None,
        "no prefix match"
    );
}
