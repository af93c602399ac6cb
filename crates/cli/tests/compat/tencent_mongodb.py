"""Tencent Cloud's official Python SDK (tencentcloud-sdk-python, mongodb
2019-07-25) against a running Stowage: both TC3 forms (POST JSON, GET) and
the legacy signatures, the response and error shapes the SDK reads.
ENDPOINT, AK, SK, RS (a cmgo- replica set instance), SHARDED (a cmgo-
sharded cluster of two shards)."""

import os

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.mongodb.v20190725 import models, mongodb_client

ENDPOINT, AK, SK = os.environ["ENDPOINT"], os.environ["AK"], os.environ["SK"]
RS, SHARDED = os.environ["RS"], os.environ["SHARDED"]


def client(method="POST", sign=None, secret=SK, ak=AK):
    hp = HttpProfile(protocol="http", endpoint=ENDPOINT, reqMethod=method)
    cp = ClientProfile(httpProfile=hp)
    if sign:
        cp.signMethod = sign
    return mongodb_client.MongodbClient(credential.Credential(ak, secret), "ap-guangzhou", cp)


def describe(c, **params):
    req = models.DescribeDBInstancesRequest()
    req._deserialize(params)
    return c.DescribeDBInstances(req)


def fails(code, f):
    try:
        f()
    except TencentCloudSDKException as e:
        assert e.code == code, (e.code, e.message)
        assert e.requestId, "no request id"
        return e
    raise AssertionError(f"no {code}")


# Every form the clients send gets the same answer.
for method, sign in (("POST", None), ("GET", None), ("POST", "HmacSHA256"), ("GET", "HmacSHA1")):
    r = describe(client(method, sign))
    ids = sorted(d.InstanceId for d in r.InstanceDetails)
    assert r.TotalCount == 2 and ids == sorted([RS, SHARDED]), r.to_json_string()
    assert r.RequestId, r
    print(f"tencent {method} {sign or 'TC3'}: DescribeDBInstances ok")

# Filters and the instance's shape.
r = describe(client(), InstanceIds=[SHARDED])
[d] = r.InstanceDetails
assert d.ClusterType == 1 and d.Status == 2 and d.MongoVersion.startswith("MONGO_8"), d.to_json_string()
assert [s.ReplicaSetId for s in d.ReplicaSets] == [f"{SHARDED}_0", f"{SHARDED}_1"], d.to_json_string()
r = describe(client("GET"), ClusterType=0)
assert [d.InstanceId for d in r.InstanceDetails] == [RS], r.to_json_string()
assert [s.ReplicaSetId for s in r.InstanceDetails[0].ReplicaSets] == [f"{RS}_0"]
r = describe(client(), Limit=1, Offset=1)
assert r.TotalCount == 2 and len(r.InstanceDetails) == 1, r.to_json_string()

# Errors, each through the SDK's exception.
fails("AuthFailure.SignatureFailure", lambda: describe(client(secret="wrong")))
fails("AuthFailure.SignatureFailure", lambda: describe(client("POST", "HmacSHA256", secret="wrong")))
fails("AuthFailure.SecretIdNotFound", lambda: describe(client(ak="STWKNOSUCHKEY0000000")))
fails("InvalidParameterValue", lambda: describe(client(), Limit=1000))
fails("InvalidParameterValue", lambda: describe(client("GET"), Limit="many"))
fails("InvalidAction", lambda: client().call_json("NoSuchAction", {}))
e = fails("UnknownParameter", lambda: client().call_json("DescribeDBInstances", {"Nope": 1}))
assert "Nope" in e.message, e.message
# A backup: CreateBackupDBInstance, polled with DescribeAsyncRequestInfo.
import time
c = client()
def create(inst, **kw):
    req = models.CreateBackupDBInstanceRequest()
    req._deserialize(dict(InstanceId=inst, **kw))
    return c.CreateBackupDBInstance(req).AsyncRequestId
def wait(async_id):
    seen = []
    while True:
        req = models.DescribeAsyncRequestInfoRequest()
        req.AsyncRequestId = async_id
        r = c.DescribeAsyncRequestInfo(req)
        seen.append(r.Status)
        if r.Status in ("success", "failed", "undoed"):
            return r, seen
        time.sleep(0.1)
a1 = create(RS, BackupMethod=0, BackupRemark="before the upgrade", BackupRetentionDays=30)
r, seen = wait(a1)
assert r.Status == "success" and r.StartTime and r.EndTime, (r.to_json_string(), seen)
a2 = create(SHARDED)
r, _ = wait(a2)
assert r.Status == "success", r.to_json_string()
fails("InvalidParameterValue", lambda: create(RS, BackupMethod=1))
fails("InvalidParameterValue", lambda: create(RS, BackupRetentionDays=9000))
fails("InvalidParameterValue.NotFoundInstance", lambda: create("cmgo-nosuch00"))
fails("MissingParameter", lambda: c.call_json("CreateBackupDBInstance", {}))
fails("ResourceNotFound", lambda: c.call_json("DescribeAsyncRequestInfo", {"AsyncRequestId": "999999"}))

# DescribeDBBackups: the set, its size in KB, its remark; paging and method filter.
def backups(inst, **kw):
    req = models.DescribeDBBackupsRequest()
    req._deserialize(dict(InstanceId=inst, **kw))
    return c.DescribeDBBackups(req)
b = backups(RS)
assert b.TotalCount == 1, b.to_json_string()
[one] = b.BackupList
assert one.BackupType == 1 and one.Status == 2 and one.BackupMethod == 0, one.to_json_string()
assert one.BackupDesc == "before the upgrade" and one.BackupSize > 0 and one.InstanceId == RS, one.to_json_string()
assert one.DeleteTime and one.StartTime <= one.EndTime, one.to_json_string()
assert backups(RS, BackupMethod=1).TotalCount == 0
assert backups(SHARDED).TotalCount == 1
create(RS)
time.sleep(0.1)
while backups(RS).TotalCount < 2:
    time.sleep(0.2)
assert len(backups(RS, Limit=1).BackupList) == 1 and len(backups(RS, Limit=1, Offset=1).BackupList) == 1
fails("InvalidParameterValue", lambda: backups(RS, Limit=0))

# DeleteDBBackups: another instance's id is refused and nothing is deleted.
ids = [x.BackId for x in backups(RS).BackupList]
other = backups(SHARDED).BackupList[0].BackId
def delete(inst, ids):
    req = models.DeleteDBBackupsRequest()
    req._deserialize({"InstanceId": inst, "BackupIds": ids})
    return c.DeleteDBBackups(req)
fails("InvalidParameterValue.BackupFileNotFound", lambda: delete(RS, [ids[0], other]))
assert backups(RS).TotalCount == 2
delete(RS, [ids[0]])
assert [x.BackId for x in backups(RS).BackupList] == [ids[1]]
fails("UnsupportedOperation", lambda: c.call_json("RestoreDBInstance", {"InstanceId": RS, "RestoreTime": "2026-01-01 00:00:00"}))
print("tencent: backups (create, async status, list, delete) ok")

# Backup rules on the one policy model (hours UTC; 0 = Sunday).
req = models.DescribeBackupRulesRequest()
req.InstanceId = RS
r = c.DescribeBackupRules(req)
assert (r.BackupSaveTime, r.BackupFrequency, r.BackupTime, r.BackupMethod, r.ActiveWeekdays) == (
    7, 24, 2, 0, "0,1,2,3,4,5,6"), r.to_json_string()
assert r.BackupTotalSize.SnapshotSize > 0, r.to_json_string()
req = models.SetBackupRulesRequest()
req._deserialize({"InstanceId": RS, "BackupMethod": 0, "BackupTime": 21, "BackupRetentionPeriod": 30,
                  "ActiveWeekdays": "0,6", "BackupFrequency": 24, "OplogExpiredDays": 7, "LongTermInterval": "monthly"})
c.SetBackupRules(req)
q = models.DescribeBackupRulesRequest()
q.InstanceId = RS
r = c.DescribeBackupRules(q)
assert (r.BackupSaveTime, r.BackupTime, r.ActiveWeekdays, r.OplogExpiredDays, r.LongTermInterval) == (
    30, 21, "0,6", 7, "monthly"), r.to_json_string()
def set_rules(**kw):
    q = models.SetBackupRulesRequest()
    q._deserialize(dict(InstanceId=RS, BackupMethod=0, BackupTime=1, **kw))
    return c.SetBackupRules(q)
fails("InvalidParameterValue", lambda: set_rules(BackupRetentionPeriod=400))
fails("InvalidParameterValue", lambda: set_rules(ActiveWeekdays="7"))
fails("InvalidParameterValue", lambda: c.call_json("SetBackupRules", {"InstanceId": RS, "BackupMethod": 0, "BackupTime": 24}))
fails("UnsupportedOperation", lambda: set_rules(BackupFrequency=12))
fails("MissingParameter", lambda: c.call_json("SetBackupRules", {"InstanceId": RS, "BackupMethod": 0}))
print("tencent: backup rules ok")

# Download tasks: one per replica set, listed with every filter, fetched by
# their link.
import urllib.request, io, tarfile, datetime
def dl_create(inst, name, sets):
    req = models.CreateBackupDownloadTaskRequest()
    req._deserialize({"InstanceId": inst, "BackupName": name, "BackupSets": [{"ReplicaSetId": r} for r in sets]})
    return c.CreateBackupDownloadTask(req)
def dl_list(inst, raw=False, **kw):
    req = models.DescribeBackupDownloadTaskRequest()
    req._deserialize(dict(InstanceId=inst, **kw))
    while True:
        try:
            return c.DescribeBackupDownloadTask(req)
        except TencentCloudSDKException as e:
            # At most 20 a second: the checks below are quicker than that.
            if raw or e.code != "RequestLimitExceeded":
                raise
            time.sleep(1)
rs_name = backups(RS).BackupList[0].BackupName
sh_name = backups(SHARDED).BackupList[0].BackupName
assert rs_name.startswith(RS + "_") and len(rs_name) == len(RS) + 20, rs_name
r = dl_create(RS, rs_name, [f"{RS}_0"])
assert [(t.ReplicaSetId, t.Status) for t in r.Tasks] == [(f"{RS}_0", 0)], r.to_json_string()
r = dl_create(SHARDED, sh_name, [f"{SHARDED}_0", f"{SHARDED}_1"])
assert len(r.Tasks) == 2
for inst, n in ((RS, 1), (SHARDED, 2)):
    for _ in range(200):
        got = dl_list(inst)
        if got.TotalCount == n and all(t.Status == 2 for t in got.Tasks):
            break
        time.sleep(0.2)
    assert got.TotalCount == n and all(t.Status == 2 and t.Percent == 100 for t in got.Tasks), got.to_json_string()
    if inst == RS:
        rs_first_done = int(time.time())
[t] = dl_list(RS).Tasks
assert t.BackupName == rs_name and t.ReplicaSetId == f"{RS}_0" and t.BackupSize > 0 and t.Url, t.to_json_string()
assert datetime.datetime.strptime(t.CreateTime, "%Y-%m-%d %H:%M:%S")
data = urllib.request.urlopen(t.Url).read()
assert len(data) == t.BackupSize and "oplog.bson" in tarfile.open(fileobj=io.BytesIO(data)).getnames()
sh = dl_list(SHARDED)
assert sorted(x.ReplicaSetId for x in sh.Tasks) == [f"{SHARDED}_0", f"{SHARDED}_1"], sh.to_json_string()
names = tarfile.open(fileobj=io.BytesIO(urllib.request.urlopen(
    [x for x in sh.Tasks if x.ReplicaSetId == f"{SHARDED}_1"][0].Url).read())).getnames()
assert "shop/a.bson" in names, names
# Filters, order and paging, against what the tasks say of themselves.
assert dl_list(SHARDED, Status=[2]).TotalCount == 2 and dl_list(SHARDED, Status=[0, 1, 3, 4]).TotalCount == 0
assert dl_list(SHARDED, BackupName=sh_name).TotalCount == 2
ids_desc = [x.ReplicaSetId for x in dl_list(SHARDED).Tasks]
ids_asc = [x.ReplicaSetId for x in dl_list(SHARDED, OrderByType="asc").Tasks]
assert ids_asc == ids_desc[::-1], (ids_asc, ids_desc)
fin = [x.ReplicaSetId for x in dl_list(SHARDED, OrderBy="finishTime", OrderByType="asc").Tasks]
assert sorted(fin) == sorted(ids_asc)
p1 = dl_list(SHARDED, Limit=1).Tasks
p2 = dl_list(SHARDED, Limit=1, Offset=1).Tasks
assert [p1[0].ReplicaSetId, p2[0].ReplicaSetId] == ids_desc and dl_list(SHARDED, Limit=1).TotalCount == 2
first = min(x.CreateTime for x in sh.Tasks)
assert dl_list(SHARDED, StartTime=first, EndTime="2999-01-01 00:00:00").TotalCount == 2
assert dl_list(SHARDED, StartTime="2999-01-01 00:00:00").TotalCount == 0
assert dl_list(SHARDED, EndTime="2000-01-01 00:00:00").TotalCount == 0
fails("InvalidParameterValue", lambda: dl_list(SHARDED, StartTime="yesterday"))
fails("InvalidParameterValue", lambda: dl_list(SHARDED, OrderBy="size"))
fails("InvalidParameterValue", lambda: dl_list(SHARDED, Limit=101))
fails("InvalidParameterValue", lambda: dl_list(SHARDED, Status=[9]))
fails("InvalidParameterValue.BackupFileNotFound", lambda: dl_list(SHARDED, BackupName="nosuch"))
fails("InvalidParameterValue.BackupFileNotFound", lambda: dl_create(RS, "nosuch", [f"{RS}_0"]))
fails("InvalidParameterValue", lambda: dl_create(RS, rs_name, [f"{RS}_7"]))
fails("MissingParameter", lambda: c.call_json("CreateBackupDownloadTask", {"InstanceId": RS, "BackupName": rs_name}))
fails("InvalidParameterValue.NotFoundInstance", lambda: dl_list("cmgo-nosuch00"))
# At most 20 DescribeBackupDownloadTask a second per key.
codes = []
time.sleep(1.1)
for _ in range(30):
    try:
        dl_list(RS, raw=True)
        codes.append("ok")
    except TencentCloudSDKException as e:
        codes.append(e.code)
assert "RequestLimitExceeded" in codes and codes.count("ok") >= 20, codes
time.sleep(1.1)
print("tencent: download tasks ok")

# Every filter, order and page of DescribeBackupDownloadTask, against an
# expectation computed here from what this script did and saw (when it
# created each task, when it saw each end), never from the server's own
# filtering. One task per group, each group in seconds of its own; a
# repository lock of "another node" makes a task wait for retry (Status 4).
import calendar, itertools, json
DATA_DIR = os.environ["DATA_DIR"]
keys = [(AK, SK)] + [tuple(k.split(":", 1)) for k in os.environ["EXTRA_KEYS"].split(",")]
pool = itertools.cycle([client(ak=a, secret=s) for a, s in keys])
def parse(v):
    return calendar.timegm(time.strptime(v, "%Y-%m-%d %H:%M:%S"))
def fmt(sec):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))
def query(**kw):
    req = models.DescribeBackupDownloadTaskRequest()
    req._deserialize(dict(InstanceId=RS, **{k: v for k, v in kw.items() if v is not None}))
    while True:
        try:
            return next(pool).DescribeBackupDownloadTask(req)
        except TencentCloudSDKException as e:
            if e.code != "RequestLimitExceeded":
                raise
            time.sleep(0.2)
def every():
    return query(Limit=100).Tasks
LOCK = os.path.join(DATA_DIR, "repository", "locks", "0123456789abcdef0123456789abcdef")
def lock(on):
    if on:
        with open(LOCK, "w") as f:
            json.dump({"kind": "exclusive", "hostname": "another-node", "pid": 4242,
                       "time_ms": int(time.time() * 1000), "purpose": "gc"}, f)
    else:
        os.remove(LOCK)
def until(pred, what):
    for _ in range(600):
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out: " + what)
A = rs_name
create(RS)
B = until(lambda: [x.BackupName for x in backups(RS).BackupList if x.BackupName != A], "a second backup")[0]
[pre] = every()
G = [dict(name=A, ct=pre.CreateTime, lo=parse(pre.CreateTime), done=rs_first_done, status=2)]
def group(name, locked=False):
    time.sleep(1.1)
    lo = int(time.time())
    if locked:
        lock(True)
    known = {(t.BackupName, t.CreateTime) for t in every()}
    dl_create(RS, name, [f"{RS}_0"])
    [t] = until(lambda: [t for t in every() if (t.BackupName, t.CreateTime) not in known], "the new task")
    want = 4 if locked else 2
    until(lambda: [x for x in every() if x.CreateTime == t.CreateTime and x.Status == want], f"status {want}")
    g = dict(name=name, ct=t.CreateTime, lo=lo, done=int(time.time()), status=want)
    assert lo <= parse(t.CreateTime) <= g["done"], (g, t.to_json_string())
    G.append(g)
    return g
g1 = group(B)
g2 = group(A, locked=True)       # waits for retry; its next attempt is 5 s after the failure
lock(False)
g3 = group(B)
g4 = group(A)
until(lambda: [x for x in every() if x.CreateTime == g2["ct"] and x.Status == 2], "the retried task")
g2.update(done=int(time.time()), status=2, after=g2["lo"] + 5)
assert g2["after"] > g4["done"], G  # it ended after g4 did
g5 = group(B, locked=True)       # stays waiting while the lock is there
time.sleep(6)                    # past its second attempt (5 s); the third is 20 s later
assert [x.Status for x in every() if x.CreateTime == g5["ct"]] == [4]
FINISH_ORDER = [0, 1, 3, 4, 2]   # groups by when they ended; g5 has not
def expect(name=None, status=None, start=None, end=None, limit=None, offset=None, by=None, order=None):
    now = int(time.time())
    rows = []
    for i, g in enumerate(G):
        if name and g["name"] != name or status and g["status"] not in status:
            continue
        if start and parse(g["ct"]) < parse(start):
            continue
        if end:
            e = parse(end)
            if g["status"] == 2:
                first, last = g.get("after", parse(g["ct"])), g["done"]
                assert last <= e or first > e, ("a boundary inside a task's span", g, end)
                if last > e:
                    continue
            elif now > e:        # an unfinished task's end is now
                continue
        rows.append(i)
    if by == "finishTime":
        rows.sort(key=lambda i: FINISH_ORDER.index(i) if i in FINISH_ORDER else 99)
    else:
        rows.sort(key=lambda i: parse(G[i]["ct"]))
    if order in (None, "desc"):
        rows.reverse()
    off, lim = offset or 0, limit or 20
    return len(rows), [(G[i]["name"], G[i]["ct"], G[i]["status"]) for i in rows[off:off + lim]]
def check(**kw):
    args = dict(BackupName=kw.get("name"), Status=kw.get("status"), StartTime=kw.get("start"), EndTime=kw.get("end"),
                Limit=kw.get("limit"), Offset=kw.get("offset"), OrderBy=kw.get("by"), OrderByType=kw.get("order"))
    r = query(**args)
    got = (r.TotalCount, [(t.BackupName, t.CreateTime, t.Status) for t in r.Tasks])
    assert got == expect(**kw), (kw, got, expect(**kw), G)
    return 1
n = 0
for name, status, start, end in itertools.product(
        (None, A, B), (None, [2], [4], [2, 4], [0, 1, 3]),
        (None, g2["ct"], g4["ct"], "2999-01-01 00:00:00"),
        (None, fmt(g1["done"]), fmt(g4["done"]), "2000-01-01 00:00:00", "2999-01-01 00:00:00")):
    n += check(name=name, status=status, start=start, end=end)
for name, by, order, (limit, offset) in itertools.product(
        (None, B), (None, "createTime", "finishTime"), (None, "asc", "desc"),
        ((None, None), (2, 0), (2, 2), (3, 4), (1, 5), (4, 6))):
    n += check(name=name, by=by, order=order, limit=limit, offset=offset)
lock(False)
print(f"tencent: {n} DescribeBackupDownloadTask filter/order/page combinations match the expectation")

# A key limited by a policy with this cloud's names.
lim = client(ak=os.environ["LIMITED_AK"], secret=os.environ["LIMITED_SK"])
assert describe(lim).TotalCount == 2
q = models.DescribeDBBackupsRequest()
q.InstanceId = RS
lim.DescribeDBBackups(q)
q.InstanceId = SHARDED
e = fails("AuthFailure.UnauthorizedOperation", lambda: lim.DescribeDBBackups(q))
assert "mongodb:DescribeDBBackups" in e.message and SHARDED in e.message, e.message
fails("AuthFailure.UnauthorizedOperation", lambda: lim.call_json("CreateBackupDBInstance", {"InstanceId": RS}))
print("tencent: key policy ok")

# Unicode in a parameter comes back intact, in a response the SDK reads.
e = fails("InvalidParameterValue.NotFoundInstance", lambda: c.call_json("DescribeDBBackups", {"InstanceId": "cmgo-数据库✓"}))
assert "cmgo-数据库✓" in e.message, e.message
r = describe(client("GET"), SearchKey="数据")
assert r.TotalCount == 0, r.to_json_string()
print("tencent: unicode ok")

print("all tencent SDK checks passed")
