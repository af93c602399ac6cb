"""Alibaba's official rds and PolarDB SDKs (Tea; core SDK for raw JSON)
against a running Stowage whose rm- and pc- instances are MariaDB servers.
ENDPOINT, AK, SK, INSTANCE (rm-), CLUSTER (pc-) from the environment; run by
crates/cli/tests/e2e/sdk.rs."""

import io
import json
import os
import tarfile
import time

from alibabacloud_polardb20170801 import models as pdb
from alibabacloud_polardb20170801.client import Client as PolarClient
from alibabacloud_rds20140815 import models as rds
from alibabacloud_rds20140815.client import Client as RdsClient
from alibabacloud_tea_openapi import models as open_api
from alibabacloud_tea_openapi.exceptions import ClientException
from darabonba.runtime import RuntimeOptions
import urllib.request
from aliyunsdkcore.client import AcsClient
from aliyunsdkrds.request.v20140815.DescribeBackupsRequest import DescribeBackupsRequest

ENDPOINT, AK, SK = os.environ["ENDPOINT"], os.environ["AK"], os.environ["SK"]
INSTANCE, CLUSTER = os.environ["INSTANCE"], os.environ["CLUSTER"]
RT = RuntimeOptions()


def cfg():
    return open_api.Config(access_key_id=AK, access_key_secret=SK, endpoint=ENDPOINT,
                           protocol="HTTP", region_id="cn-hangzhou")


c = RdsClient(cfg())

# The rds instance is a MariaDB server, as DescribeDBInstances says.
body = c.describe_dbinstances_with_options(
    rds.DescribeDBInstancesRequest(region_id="cn-hangzhou", dbinstance_id=INSTANCE), RT).body
inst = body.items.dbinstance[0]
assert inst.engine == "MariaDB" and inst.engine_version == "10.11", inst.to_map()
body = c.describe_dbinstances_with_options(
    rds.DescribeDBInstancesRequest(region_id="cn-hangzhou", engine="MariaDB"), RT).body
assert [i.dbinstance_id for i in body.items.dbinstance] == [INSTANCE], body.to_map()
body = c.describe_dbinstances_with_options(
    rds.DescribeDBInstancesRequest(region_id="cn-hangzhou", engine="PostgreSQL"), RT).body
assert body.items.dbinstance == [], body.to_map()

# The cloud's disk snapshots are not a method Stowage has.
try:
    c.create_backup_with_options(rds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_method="Snapshot"), RT)
    raise AssertionError("Snapshot accepted")
except ClientException as e:
    assert e.code == "InvalidParameter" and "Logical or Physical" in e.message, (e.code, e.message)

job = c.create_backup_with_options(
    rds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_method="Logical"), RT).body.backup_job_id
seen = []
while True:
    j = c.describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE, backup_job_id=int(job)), RT).body.items.backup_job[0]
    seen.append((j.backup_status, int(j.process)))
    if j.backup_status in ("Finished", "Failed"):
        break
    time.sleep(0.1)
assert j.backup_status == "Finished", seen
percents = [p for _, p in seen]
assert percents == sorted(percents), seen

b = c.describe_backups_with_options(rds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT).body.items.backup[0]
assert b.backup_id == j.backup_id, (b.to_map(), j.to_map())
assert (b.engine, b.engine_version, b.backup_method) == ("MariaDB", "10.11", "Logical"), b.to_map()
assert int(b.backup_size) > 1_000_000, b.to_map()
# The link serves the dump as one SQL script (mariadb < dump.sql).
r = urllib.request.urlopen(b.backup_download_url)
assert r.headers["Content-Type"] == "application/sql", dict(r.headers)
assert r.headers["Content-Disposition"] == 'attachment; filename="dump.sql"', dict(r.headers)
script = r.read()
first, second = script.split(b"\n", 2)[:2]
assert first == b"/*M!999999\\- enable the sandbox mode */", first
assert second.startswith(b"-- Stowage dump of 10.11") and b"INSERT INTO `orders`" in script, script[:300]

# The binary log position is outside the model: the raw JSON has it.
req = DescribeBackupsRequest()
req.set_DBInstanceId(INSTANCE)
req.set_endpoint("127.0.0.1")
req.set_protocol_type("http")
raw = json.loads(AcsClient(AK, SK, "cn-hangzhou", port=int(ENDPOINT.rsplit(":", 1)[1])).do_action_with_exception(req))
r = raw["Items"]["Backup"][0]
assert r["BinlogFile"].startswith("binlog.") and int(r["BinlogPosition"]) > 4, r
assert r["BackupGtid"].startswith("0-1-"), r
print(f"rds mysql: job {job} -> set {b.backup_id}, progress {percents}, {r['BinlogFile']}:{r['BinlogPosition']}")

# Physical: mariadb-backup on this machine; the set is the data directory.
job = c.create_backup_with_options(
    rds.CreateBackupRequest(dbinstance_id=INSTANCE, backup_method="Physical"), RT).body.backup_job_id
while True:
    j = c.describe_backup_tasks_with_options(
        rds.DescribeBackupTasksRequest(dbinstance_id=INSTANCE, backup_job_id=int(job)), RT).body.items.backup_job[0]
    if j.backup_status in ("Finished", "Failed"):
        break
    time.sleep(0.1)
assert j.backup_status == "Finished", j.to_map()
sets = c.describe_backups_with_options(rds.DescribeBackupsRequest(dbinstance_id=INSTANCE), RT).body.items.backup
phys = [b for b in sets if b.backup_id == j.backup_id][0]
assert phys.backup_method == "Physical" and phys.engine == "MariaDB", phys.to_map()
r = urllib.request.urlopen(phys.backup_download_url)
assert r.headers["Content-Disposition"] == 'attachment; filename="data.tar"', dict(r.headers)
names = tarfile.open(fileobj=io.BytesIO(r.read())).getnames()
# mariadb-backup's files as it streams them (a data directory after
# mariadb-backup --prepare).
assert "ibdata1" in names and "xtrabackup_checkpoints" in names, names[:30]
assert any(n.startswith("shop/orders.") for n in names), names
print(f"rds mysql physical: job {job} -> set {phys.backup_id}")

# The policy chooses the method of automated backups: Logical by default.
pol = c.describe_backup_policy_with_options(rds.DescribeBackupPolicyRequest(dbinstance_id=INSTANCE), RT).body
assert pol.backup_method == "Logical", pol.to_map()
try:
    c.modify_backup_policy_with_options(rds.ModifyBackupPolicyRequest(dbinstance_id=INSTANCE, backup_method="Snapshot"), RT)
    raise AssertionError("Snapshot accepted")
except ClientException as e:
    assert e.code == "InvalidParameter", (e.code, e.message)
c.modify_backup_policy_with_options(rds.ModifyBackupPolicyRequest(dbinstance_id=INSTANCE, backup_method="Physical"), RT)
pol = c.describe_backup_policy_with_options(rds.DescribeBackupPolicyRequest(dbinstance_id=INSTANCE), RT).body
assert pol.backup_method == "Physical", pol.to_map()
print("rds mysql: policy BackupMethod ok")

p = PolarClient(cfg())
cl = p.describe_dbclusters_with_options(
    pdb.DescribeDBClustersRequest(region_id="cn-hangzhou", dbcluster_ids=CLUSTER), RT).body.items.dbcluster[0]
assert cl.dbtype == "MariaDB" and cl.dbversion == "10.11", cl.to_map()
job = p.create_backup_with_options(pdb.CreateBackupRequest(dbcluster_id=CLUSTER), RT).body.backup_job_id
while True:
    jobs = p.describe_backup_tasks_with_options(
        pdb.DescribeBackupTasksRequest(dbcluster_id=CLUSTER, backup_job_id=job), RT).body.items.backup_job
    if not jobs or jobs[0].backup_progress_status in ("Finished", "Failed"):
        break
    time.sleep(0.1)
pb = p.describe_backups_with_options(pdb.DescribeBackupsRequest(dbcluster_id=CLUSTER), RT).body.items.backup[0]
assert pb.backup_method == "Logical" and pb.backup_status == "Success", pb.to_map()
print("all mysql SDK checks passed")
