// pgjdbc through pgstay in transaction mode: server-side prepared statements (pgjdbc switches
// to named statements after prepareThreshold = 5 executions) in autocommit and inside
// transactions, batches, an error inside a transaction, while other JDBC connections run.
//
// usage: java -cp <dir>:/usr/share/java/postgresql.jar Prepared <host> <port> <table> <others>
// Exits 0 when every answer was right, 1 otherwise (the reason on stderr).
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;

import org.postgresql.PGStatement;

public class Prepared {
    static String url;

    static Connection connect(String appName) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", "postgres");
        p.setProperty("password", "postgres");
        p.setProperty("prepareThreshold", "5");
        p.setProperty("ApplicationName", appName);
        return DriverManager.getConnection(url, p);
    }

    static void check(boolean ok, String what) {
        if (!ok)
            throw new AssertionError(what);
    }

    static int plusOne(PreparedStatement ps, int i, Set<Integer> pids) throws SQLException {
        ps.setInt(1, i);
        try (ResultSet rs = ps.executeQuery()) {
            check(rs.next(), "no row for " + i);
            int v = rs.getInt(1);
            check(v == i + 1, "select " + i + " + 1 gave " + v);
            pids.add(rs.getInt(2));
            check(!rs.next(), "two rows for " + i);
            return v;
        }
    }

    static long count(Connection c, String table, int worker) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("select count(*) from " + table + " where w = ?")) {
            ps.setInt(1, worker);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    /* The connection under test. */
    static void mainWorker(String table) throws Exception {
        try (Connection c = connect("jdbc-main")) {
            Set<Integer> pids = new HashSet<>();
            PreparedStatement ps = c.prepareStatement("select ?::int + 1, pg_backend_pid()");
            // autocommit: each execution is its own transaction, so may land on any server
            for (int i = 0; i < 20; i++)
                plusOne(ps, i, pids);
            check(((PGStatement) ps).isUseServerPrepare(), "pgjdbc did not switch to a server-side statement");

            // inside transactions, with a second server-prepared statement that writes
            PreparedStatement ins = c.prepareStatement("insert into " + table + " (w, v) values (?, ?)");
            c.setAutoCommit(false);
            int committed = 0;
            for (int t = 0; t < 8; t++) {
                for (int i = 0; i < 20; i++) {
                    plusOne(ps, t * 100 + i, pids);
                    ins.setInt(1, 0);
                    ins.setInt(2, t * 100 + i);
                    check(ins.executeUpdate() == 1, "insert did not insert one row");
                }
                if (t % 4 == 3) {
                    c.rollback();
                } else {
                    c.commit();
                    committed += 20;
                }
            }
            check(((PGStatement) ins).isUseServerPrepare(), "insert not server-prepared");
            c.commit();
            check(count(c, table, 0) == committed, "rows after commits/rollbacks: " + count(c, table, 0)
                                                           + " != " + committed);
            c.commit();

            // the server the transaction runs on has the statement under pgstay's name
            plusOne(ps, 1, pids);
            try (Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("select count(*) from pg_prepared_statements "
                                                + "where name like 'pgstay%' and statement like '%::int + 1%'")) {
                rs.next();
                check(rs.getInt(1) >= 1, "statement not prepared under pgstay's name on this server");
            }
            c.commit();

            // a batch: several Bind/Execute before one Sync
            for (int t = 0; t < 3; t++) {
                for (int i = 0; i < 10; i++) {
                    ins.setInt(1, 1);
                    ins.setInt(2, i);
                    ins.addBatch();
                }
                int[] res = ins.executeBatch();
                check(res.length == 10, "batch result length " + res.length);
                c.commit();
            }
            check(count(c, table, 1) == 30, "batched rows: " + count(c, table, 1));
            c.commit();

            // an error inside a transaction: rolled back, the statements go on working
            PreparedStatement div = c.prepareStatement("select 100 / ?::int");
            for (int i = 0; i < 8; i++) {
                div.setInt(1, 1);
                try (ResultSet rs = div.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == 100, "100 / 1");
                }
                c.commit();
            }
            div.setInt(1, 0);
            try {
                div.executeQuery().close();
                throw new AssertionError("division by zero did not fail");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "unexpected error " + e.getSQLState() + " " + e);
            }
            c.rollback();
            for (int i = 0; i < 5; i++)
                plusOne(ps, 1000 + i, pids);
            c.commit();

            // back to autocommit
            c.setAutoCommit(true);
            for (int i = 0; i < 20; i++)
                plusOne(ps, 2000 + i, pids);
            ps.close();
            ins.close();
            div.close();
            System.out.println("main ok, server pids seen: " + pids.size());
        }
    }

    /* Another JDBC connection doing its own prepared statements concurrently. */
    static void otherWorker(int id, AtomicBoolean stop) throws Exception {
        try (Connection c = connect("jdbc-other-" + id)) {
            PreparedStatement ps = c.prepareStatement("select ?::text || '-' || ?::int");
            int n = 0;
            while (!stop.get() || n < 30) {
                ps.setString(1, "w" + id);
                ps.setInt(2, n);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    String v = rs.getString(1);
                    check(v.equals("w" + id + "-" + n), "other worker got " + v);
                }
                if (n % 7 == 0) {
                    c.setAutoCommit(false);
                    ps.setString(1, "t" + id);
                    ps.setInt(2, n);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(rs.getString(1).equals("t" + id + "-" + n), "other worker in txn");
                    }
                    c.commit();
                    c.setAutoCommit(true);
                }
                n++;
            }
        }
    }

    public static void main(String[] args) throws Exception {
        url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/postgres";
        String table = args[2];
        int others = Integer.parseInt(args[3]);
        AtomicBoolean stop = new AtomicBoolean(false);
        List<Throwable> errors = new ArrayList<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < others; i++) {
            final int id = i;
            Thread t = new Thread(() -> {
                try {
                    otherWorker(id, stop);
                } catch (Throwable e) {
                    synchronized (errors) {
                        errors.add(e);
                    }
                }
            });
            t.start();
            threads.add(t);
        }
        try {
            mainWorker(table);
        } catch (Throwable e) {
            synchronized (errors) {
                errors.add(e);
            }
        }
        stop.set(true);
        for (Thread t : threads)
            t.join(30000);
        if (!errors.isEmpty()) {
            for (Throwable e : errors)
                e.printStackTrace();
            System.exit(1);
        }
        System.out.println("all ok");
        System.exit(0);
    }
}
