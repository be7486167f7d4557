// OpenSSL calls that are macros (or need a C callback), wrapped so Swift can call them.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <string.h>

static inline int wp_ssl_ctx_tls13_only(SSL_CTX *ctx) {
    return SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) && SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
}
static inline long wp_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
/// Whole writes (the output BIO never refuses, so SSL_write seals everything it is given at once; partial
/// writes would return after each 16 KiB record), and OpenSSL's buffers released while idle.
static inline long wp_ssl_mode_whole_writes(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline void wp_ssl_ctx_read_ahead(SSL_CTX *ctx) { SSL_CTX_set_read_ahead(ctx, 1); }
static inline uint64_t wp_ssl_op_no_ticket(void) { return SSL_OP_NO_TICKET; }
static inline int wp_ssl_ctx_set_groups(SSL_CTX *ctx, const char *list) { return SSL_CTX_set1_groups_list(ctx, list); }
static inline long wp_ssl_ctx_session_cache_off(SSL_CTX *ctx) { return SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); }

static inline int wp_sk_general_name_num(const GENERAL_NAMES *names) { return sk_GENERAL_NAME_num(names); }
static inline const GENERAL_NAME *wp_sk_general_name_value(const GENERAL_NAMES *names, int i) { return sk_GENERAL_NAME_value(names, i); }
static inline void wp_general_names_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }
/// The URI of a GENERAL_NAME of type GEN_URI, else NULL (the union is not reachable from Swift reliably).
static inline const ASN1_IA5STRING *wp_general_name_uri(const GENERAL_NAME *name) {
    return name->type == GEN_URI ? name->d.uniformResourceIdentifier : NULL;
}

/// ALPN: the server accepts only "h2" (HBONE); a client offering anything else fails the handshake.
static int wp_alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                             const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    for (unsigned int i = 0; i < inlen; i += 1 + in[i]) {
        if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}
static inline void wp_ssl_ctx_require_alpn_h2(SSL_CTX *ctx) { SSL_CTX_set_alpn_select_cb(ctx, wp_alpn_select_h2, NULL); }

/// TLS 1.2 or later (an HTTPS API server, not HBONE).
static inline int wp_ssl_ctx_tls12_or_later(SSL_CTX *ctx) { return SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); }
/// SNI for a client connection (a macro in OpenSSL).
static inline long wp_ssl_set_server_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }

/// An EC P-256 key pair generated in memory (a macro over a variadic call in OpenSSL 3); NULL on failure.
static inline EVP_PKEY *wp_ec_p256_key(void) { return EVP_EC_gen("P-256"); }

/// A certificate signing request as ztunnel makes one: an empty subject, one URI SAN (critical, as RFC 5280
/// asks when the subject is empty), signed with SHA-256 by `key`; as PEM in a memory BIO, NULL on failure.
static inline BIO *wp_csr_with_uri_san(EVP_PKEY *key, const char *uri) {
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *extensions = sk_X509_EXTENSION_new_null();
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *name = GENERAL_NAME_new();
    ASN1_IA5STRING *text = ASN1_IA5STRING_new();
    X509_EXTENSION *san = NULL;
    BIO *out = NULL;
    if (!req || !extensions || !names || !name || !text || !ASN1_STRING_set(text, uri, -1)) goto done;
    GENERAL_NAME_set0_value(name, GEN_URI, text);
    text = NULL;
    if (!sk_GENERAL_NAME_push(names, name)) goto done;
    name = NULL;
    san = X509V3_EXT_i2d(NID_subject_alt_name, 1, names);
    if (!san || !sk_X509_EXTENSION_push(extensions, san)) goto done;
    san = NULL;
    if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, key) || !X509_REQ_add_extensions(req, extensions)
        || !X509_REQ_sign(req, key, EVP_sha256())) goto done;
    out = BIO_new(BIO_s_mem());
    if (out && !PEM_write_bio_X509_REQ(out, req)) { BIO_free(out); out = NULL; }
done:
    X509_EXTENSION_free(san);
    ASN1_IA5STRING_free(text);
    GENERAL_NAME_free(name);
    GENERAL_NAMES_free(names);
    sk_X509_EXTENSION_pop_free(extensions, X509_EXTENSION_free);
    X509_REQ_free(req);
    return out;
}

/// The bytes held by a memory BIO (a macro in OpenSSL).
static inline long wp_bio_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }
/// Adds one certificate of the chain sent after the leaf (a macro in OpenSSL); takes its own reference.
static inline long wp_ssl_ctx_add1_chain_cert(SSL_CTX *ctx, X509 *cert) { return SSL_CTX_add1_chain_cert(ctx, cert); }
/// Frees memory OpenSSL allocated (a macro in OpenSSL).
static inline void wp_openssl_free(void *pointer) { OPENSSL_free(pointer); }
