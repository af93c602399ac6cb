//! The test MongoDB server starts, answers as a replica set with the name
//! it was given, keeps an oplog, and stops.

use stowage_testkit::{MongoOptions, MongoServer};

#[test]
fn secantusdb_starts_as_a_named_replica_set_with_an_oplog() {
    let mut m = MongoServer::start(MongoOptions {
        replica_set: "cmgo-test_0".into(),
        ..Default::default()
    });
    let out = m.pymongo(
        "print(client.admin.command('hello')['setName'])\n\
         client.db.t.insert_many([{'a': i} for i in range(10)])\n\
         print(client.db.t.count_documents({}))\n\
         print(client.local.oplog.rs.find_one(sort=[('ts', -1)])['op'])",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["cmgo-test_0", "10", "i"],
        "{}",
        m.log()
    );
    let pid = m.pid();
    m.stop();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
